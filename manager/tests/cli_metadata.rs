//! `tandem create-md`, `dump-md` and `config check` as a user runs them: exit codes, one-line
//! refusals, and nothing overwritten without `--force`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tandem-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let config = format!(
            r#"
[cluster]
name = "test"
key_file = "{dir}/cluster.key"

[[node]]
name = "alpha"
address = "127.0.0.1"
state_dir = "{dir}/alpha"

[[node]]
name = "beta"
address = "127.0.0.2"
state_dir = "{dir}/beta"

[[volume]]
name = "r0"
port = 7789
journal_size = "8MiB"
[volume.backing]
alpha = "{dir}/alpha.img"
beta = "{dir}/beta.img"
"#,
            dir = dir.display()
        );
        std::fs::write(dir.join("tandem.toml"), config).expect("config");
        Self { dir }
    }

    fn file(&self, name: &str, bytes: u64) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::File::create(&path)
            .expect("create")
            .set_len(bytes)
            .expect("size");
        path
    }

    fn tandem(&self, args: &[&str]) -> Output {
        let config = self.dir.join("tandem.toml");
        Command::new(env!("CARGO_BIN_EXE_tandem"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .expect("run tandem")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn stderr_line(output: &Output) -> String {
    let text = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(
        text.trim_end().lines().count(),
        1,
        "one line on stderr: {text:?}"
    );
    text.trim_end().to_string()
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open");
    file.write_all_at(bytes, offset).expect("write");
}

#[test]
fn create_md_writes_metadata_and_dump_md_reads_it_back() {
    let scratch = Scratch::new("create");
    scratch.file("alpha.img", 64 << 20);
    let output = scratch.tandem(&["--node", "alpha", "create-md", "r0"]);
    assert!(output.status.success(), "{output:?}");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("r0: metadata written"), "{said}");

    let output = scratch.tandem(&["--node", "alpha", "dump-md", "r0"]);
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    for field in [
        "superblock",
        "generations",
        "bitmap weight",
        "journal tail",
        "journal head",
    ] {
        assert!(text.contains(field), "dump-md shows {field}: {text}");
    }
    assert!(
        text.contains("disk state             inconsistent"),
        "{text}"
    );

    let output = scratch.tandem(&["--node", "alpha", "dump-md", "r0", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(json["volume_name"], "r0");
    assert_eq!(json["bitmap_weight"], 0);
    assert_eq!(json["journal_records"], 0);
}

#[test]
fn create_md_refuses_existing_or_foreign_content_without_force() {
    let scratch = Scratch::new("refuse");
    let alpha = scratch.file("alpha.img", 64 << 20);
    assert!(
        scratch
            .tandem(&["--node", "alpha", "create-md", "r0"])
            .status
            .success()
    );
    let output = scratch.tandem(&["--node", "alpha", "create-md", "r0"]);
    assert_eq!(output.status.code(), Some(1));
    let line = stderr_line(&output);
    assert!(
        line.contains("holds tandem metadata") && line.contains("--force"),
        "{line}"
    );
    let before = std::fs::read(&alpha).expect("read");
    assert!(
        scratch
            .tandem(&["--node", "alpha", "create-md", "r0", "--force"])
            .status
            .success()
    );
    assert_ne!(
        before,
        std::fs::read(&alpha).expect("read"),
        "--force rewrote the metadata"
    );

    // An ext4 superblock magic at byte 1080, as mkfs.ext4 leaves it.
    let beta = scratch.file("beta.img", 64 << 20);
    write_at(&beta, 1080, &[0x53, 0xEF]);
    let output = scratch.tandem(&["--node", "beta", "create-md", "r0"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr_line(&output).contains("ext2/3/4 file system"));
    let untouched = std::fs::read(&beta).expect("read");
    assert!(
        untouched[(64 << 20) - 8192..].iter().all(|&b| b == 0),
        "nothing written"
    );

    // Unknown data where the metadata would go.
    write_at(&beta, 1080, &[0, 0]);
    write_at(&beta, (64 << 20) - 100, b"precious");
    let output = scratch.tandem(&["--node", "beta", "create-md", "r0"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr_line(&output).contains("where the metadata would go"));
}

#[test]
fn bad_input_is_refused_with_one_line_and_the_right_exit_code() {
    let scratch = Scratch::new("bad");
    scratch.file("alpha.img", 2 << 20);
    let output = scratch.tandem(&["--node", "alpha", "create-md", "r0"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr_line(&output).contains("too small"));
    let output = scratch.tandem(&["--node", "alpha", "create-md", "nosuch"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr_line(&output).contains("no volume \"nosuch\""));
    let output = scratch.tandem(&["--node", "gamma", "dump-md", "r0"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr_line(&output).contains("no node \"gamma\""));
    let output = scratch.tandem(&["--node", "alpha", "frobnicate"]);
    assert_eq!(output.status.code(), Some(2), "usage error");
    let output = scratch.tandem(&["config", "check"]);
    assert!(output.status.success(), "{output:?}");
}

/// An invalid configuration (a dependency cycle, an unknown node, two volumes on one port):
/// `config check` exits 1 naming the problem, and the daemon refuses to start with it.
#[test]
fn an_invalid_config_is_named_by_config_check_and_stops_the_daemon() {
    let scratch = Scratch::new("invalid");
    let path = scratch.dir.join("tandem.toml");
    let good = std::fs::read_to_string(&path).expect("config");
    let group = r#"
[[group]]
name = "web"
nodes = ["alpha", "beta"]
[[group.resource]]
name = "fs"
kind = "filesystem"
volume = "r0"
mount = "/srv"
after = ["http"]
[[group.resource]]
name = "http"
kind = "process"
command = ["true"]
after = ["fs"]
"#;
    let cases = [
        (
            format!("{good}{group}"),
            "resources depend on each other in a cycle: fs after http after fs",
        ),
        (
            format!(
                "{good}{}",
                group.replace("\"alpha\", \"beta\"", "\"alpha\", \"gamma\"")
            ),
            "unknown node \"gamma\"",
        ),
        (
            format!(
                "{good}[[volume]]\nname = \"r1\"\nport = 7789\n[volume.backing]\nalpha = \"/a\"\nbeta = \"/b\"\n"
            ),
            "volumes \"r0\" and \"r1\" both use port 7789",
        ),
    ];
    scratch.file("alpha.img", 64 << 20);
    for (text, expected) in cases {
        std::fs::write(&path, text).expect("config");
        let check = scratch.tandem(&["config", "check"]);
        assert_eq!(check.status.code(), Some(1));
        let line = stderr_line(&check);
        assert!(line.contains(expected), "{expected:?} in {line:?}");
        // A daemon that wrongly started would run until killed: bounded wait.
        let mut daemon = Command::new(env!("CARGO_BIN_EXE_tandem"))
            .arg("--config")
            .arg(&path)
            .args(["--node", "alpha", "daemon"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the daemon");
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(status) = daemon.try_wait().expect("wait") {
                break status;
            }
            if started.elapsed() > std::time::Duration::from_secs(20) {
                let _ = daemon.kill();
                panic!("the daemon started with an invalid configuration ({expected})");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let output = daemon.wait_with_output().expect("output");
        assert_eq!(status.code(), Some(1), "the daemon refuses to start");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(expected),
            "{output:?}"
        );
    }
}
