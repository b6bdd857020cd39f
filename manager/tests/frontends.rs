//! Frontends side by side: a volume configured with ublk on a kernel without `ublk_drv` says so
//! in one line (status and log) while another volume on the same daemons serves over NBD.
//! On a kernel that has ublk, the same volume gets its `/dev/ublkbN` instead.

mod common;

use std::path::Path;

use common::nbd::NbdClient;
use common::{Cluster, loopback_pair};

fn volume<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["volumes"]
        .as_array()
        .and_then(|volumes| volumes.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("volume {name} in {status}"))
}

#[test]
fn a_ublk_volume_without_the_module_says_so_and_the_nbd_volume_serves() {
    let mut cluster = Cluster::new("frontends", loopback_pair(70), 128 << 20, "");
    let mut extra = "\n[[volume]]\nname = \"u0\"\nport = 7790\nfrontend = \"ublk\"\n\
                     [volume.backing]\n"
        .to_string();
    for node in ["alpha", "beta"] {
        let backing = cluster.dir.join(format!("{node}-u0.img"));
        std::fs::File::create(&backing)
            .expect("backing")
            .set_len(128 << 20)
            .expect("size");
        extra += &format!("{node} = \"{}\"\n", backing.display());
    }
    let mut text = std::fs::read_to_string(&cluster.config).expect("config");
    text += &extra;
    std::fs::write(&cluster.config, text).expect("config");
    for node in ["alpha", "beta"] {
        for name in ["r0", "u0"] {
            cluster.tandem_ok(node, &["create-md", name]);
        }
        cluster.start_daemon(node);
    }
    for name in ["r0", "u0"] {
        cluster.tandem_ok(
            "alpha",
            &["volume", "wait", name, "connected", "--timeout", "30"],
        );
        cluster.tandem_ok("alpha", &["volume", "primary", name, "--force"]);
    }

    let status: serde_json::Value =
        serde_json::from_slice(&cluster.tandem_ok("alpha", &["status", "--json"]).stdout)
            .expect("status JSON");
    let u0 = volume(&status, "u0");
    if Path::new("/dev/ublk-control").exists() {
        let device = u0["device"].as_str().expect("a ublk device");
        assert!(device.starts_with("/dev/ublkb"), "{u0}");
    } else {
        let error = u0["frontend_error"].as_str().expect("frontend_error");
        assert!(
            error.contains("ublk_drv") && !error.contains('\n'),
            "one line naming the module: {error:?}"
        );
        assert!(u0["device"].is_null(), "{u0}");
        let log = cluster.log("alpha");
        let lines = log.lines().filter(|l| l.contains("ublk_drv")).count();
        assert_eq!(lines, 1, "one log line names the module:\n{log}");
    }

    // The other volume serves and replicates.
    assert_eq!(volume(&status, "r0")["device"], "nbd://127.0.70.1:10809/r0");
    let mut client = NbdClient::connect("127.0.70.1:10809", "r0").expect("NBD");
    let block = vec![0x5a; 4096];
    client.write(8192, &block).expect("write");
    assert_eq!(client.read(8192, 4096).expect("read"), block);
    cluster.wait_synced("alpha", 60);
    let beta: serde_json::Value =
        serde_json::from_slice(&cluster.tandem_ok("beta", &["status", "--json"]).stdout)
            .expect("status JSON");
    assert_eq!(volume(&beta, "r0")["disk"], "up_to_date");
}
