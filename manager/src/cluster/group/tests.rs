use crate::config::Config;

const BASE: &str = r#"
[cluster]
name = "demo"
key_file = "/etc/tandem/cluster.key"

[[node]]
name = "alpha"
address = "10.0.0.1"

[[node]]
name = "beta"
address = "10.0.0.2"

[[volume]]
name = "r0"
port = 7789
[volume.backing]
alpha = "/dev/vdb"
beta = "/dev/vdb"
"#;

const WEB: &str = r#"
[[group]]
name = "web"
nodes = ["alpha", "beta"]

[[group.resource]]
name = "http"
kind = "process"
command = ["python3", "-m", "http.server", "80"]
after = ["fs", "vip"]
[group.resource.monitor]
interval_ms = 5000
restarts = 3
window_s = 60

[[group.resource]]
name = "vip"
kind = "ip"
address = "10.0.0.100/24"
interface = "eth0"

[[group.resource]]
name = "fs"
kind = "filesystem"
volume = "r0"
mount = "/srv/data"
after = ["data"]

[[group.resource]]
name = "data"
kind = "volume"
volume = "r0"
"#;

fn parse(groups: &str) -> Result<Config, String> {
    Config::parse(&format!("{BASE}{groups}"))
}

#[test]
fn resources_start_after_what_they_depend_on() {
    let config = parse(WEB).expect("valid");
    let group = &config.groups[0];
    let names: Vec<&str> = group
        .start_order()
        .expect("no cycle")
        .into_iter()
        .map(|i| group.resources[i].name.as_str())
        .collect();
    assert_eq!(names, ["data", "fs", "vip", "http"]);
    let monitor = group.resources[0].monitor.as_ref().expect("monitor");
    assert_eq!(
        (monitor.action.as_str(), monitor.restarts, monitor.window_s),
        ("restart", Some(3), Some(60))
    );
    assert!(group.auto_start && !group.failback);
}

#[test]
fn each_problem_is_named_in_one_line() {
    let cases = [
        (
            WEB.replace("after = [\"data\"]", "after = [\"http\"]"),
            "group \"web\": resources depend on each other in a cycle: http after fs after http",
        ),
        (
            WEB.replace("after = [\"data\"]", "after = [\"dta\"]"),
            "resource \"fs\": after names unknown resource \"dta\"",
        ),
        (
            WEB.replace(
                "nodes = [\"alpha\", \"beta\"]",
                "nodes = [\"alpha\", \"gamma\"]",
            ),
            "group \"web\": unknown node \"gamma\" (nodes: alpha, beta)",
        ),
        (
            WEB.replace(
                "mount = \"/srv/data\"",
                "mount = \"/srv/data\"\nunit = \"x.service\"",
            ),
            "resource \"fs\": unit does not belong to kind filesystem",
        ),
        (
            WEB.replace("interface = \"eth0\"", ""),
            "resource \"vip\": kind ip needs interface",
        ),
        (
            WEB.replace("address = \"10.0.0.100/24\"", "address = \"10.0.0.100\""),
            "is not an IP address with a prefix",
        ),
        (
            WEB.replace("kind = \"volume\"", "kind = \"drbd\""),
            "kind \"drbd\" is not one of volume, filesystem, ip, service, process, script, ocf",
        ),
        (
            WEB.replace("volume = \"r0\"\nmount", "volume = \"r9\"\nmount"),
            "resource \"fs\": no volume \"r9\" in the configuration",
        ),
        (
            WEB.replace("restarts = 3", "action = \"alert\"\nrestarts = 3"),
            "restarts and window_s go with action restart, not alert",
        ),
        (
            WEB.replace("name = \"vip\"", "name = \"http\""),
            "resource \"http\" is defined twice",
        ),
        (format!("{WEB}{WEB}"), "group \"web\" is defined twice"),
        (
            format!("{WEB}{}", WEB.replace("name = \"web\"", "name = \"db\"")),
            "volume \"r0\" is in groups \"web\" and \"db\"",
        ),
    ];
    for (groups, expected) in cases {
        let error = parse(&groups).expect_err(expected);
        assert!(
            error.contains(expected),
            "expected {expected:?} in {error:?}"
        );
        assert!(!error.contains('\n'), "one line: {error:?}");
    }
}
