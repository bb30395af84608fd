//! The Kubernetes manifests under `deploy/kubernetes/`. No cluster runs here, so they are checked
//! offline, twice:
//!
//! - against the Kubernetes API's schemas, strictly (no unknown field), by the Python package
//!   `kubernetes-validate` (`tests/run.sh` installs it in a virtual environment and names it in
//!   `MIRRORLAB_KUBERNETES_VALIDATE`; else it must be on the `PATH`);
//! - against each other and against mirrorlab itself: the mirror description in the ConfigMap is
//!   one the member accepts; every member's host name is its headless Service's name and a member
//!   of the description, with the same type; those Services list pods that are not ready (only
//!   the primary is); the client-facing Service selects exactly the failover members, which are
//!   ready only as primary (`/mirror_status`); every container's arguments parse with the real
//!   command line and every `MIRRORLAB_*` variable is one it reads; the liveness checks are the
//!   ones that leave a member the failover rules keep down alone; the Secret (shipped empty,
//!   which a member refuses) and the ConfigMap the members mount exist; the members run as a
//!   user, not root, on a read-only image with a writable `/tmp`.
//!
//! The YAML is read through the same Python environment (PyYAML comes with the validator) and
//! handed over as JSON. Without the validator the test fails; it never skips.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;
use clap::Parser;
use mirrorlab::cli::Cli;
use mirrorlab::config::mirror::{MemberName, default_member_name};
use mirrorlab::mirror::auto::MirrorPlan;
use serde_json::Value;

const MANIFESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes");

/// The validator's command: `MIRRORLAB_KUBERNETES_VALIDATE`, else `kubernetes-validate` on the
/// `PATH`.
fn validator() -> PathBuf {
    if let Some(path) = std::env::var_os("MIRRORLAB_KUBERNETES_VALIDATE") {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("kubernetes-validate"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "kubernetes-validate is missing: tests/run.sh installs it \
                 (pip install kubernetes-validate), or name it in MIRRORLAB_KUBERNETES_VALIDATE"
            )
        })
}

/// The Python interpreter the validator runs with (its script's `#!` line): it has PyYAML.
fn python_of(validator: &Path) -> PathBuf {
    let script = std::fs::read_to_string(validator)
        .unwrap_or_else(|e| panic!("read {}: {e}", validator.display()));
    let shebang = script.lines().next().unwrap_or_default();
    let interpreter = shebang
        .strip_prefix("#!")
        .and_then(|line| line.split_whitespace().next())
        .unwrap_or_else(|| panic!("{} has no #! line", validator.display()));
    PathBuf::from(interpreter)
}

fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(MANIFESTS)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "manifests: {files:?}");
    files
}

/// Every object of every manifest, as JSON.
fn objects(python: &Path, files: &[PathBuf]) -> Vec<Value> {
    let read = "import json, sys, yaml\n\
                print(json.dumps([d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]))";
    let out = Command::new(python)
        .arg("-c")
        .arg(read)
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    of_kind(objects, kind)
        .into_iter()
        .find(|o| o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} named {name}"))
}

/// `labels` holds every key and value of `selector`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| s.iter().all(|(k, v)| labels[k] == *v))
}

fn env_of(container: &Value) -> BTreeMap<String, String> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let value = e["value"].as_str().expect("a plain value").to_string();
            (e["name"].as_str().unwrap().to_string(), value)
        })
        .collect()
}

/// Every environment variable the command line reads, in every subcommand.
fn known_variables() -> BTreeSet<String> {
    fn walk(command: &clap::Command, into: &mut BTreeSet<String>) {
        for arg in command.get_arguments() {
            if let Some(env) = arg.get_env() {
                into.insert(env.to_string_lossy().into_owned());
            }
        }
        for sub in command.get_subcommands() {
            walk(sub, into);
        }
    }
    let mut known = BTreeSet::new();
    walk(&Cli::command(), &mut known);
    known
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_manifests_validate_against_the_kubernetes_schemas() {
    let validator = validator();
    let files = manifest_files();
    let out = Command::new(&validator)
        .arg("--strict")
        .args(&files)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", validator.display()));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(!said.contains("ERROR") && !said.contains("WARN"), "{said}");
    // One "passed" line per object: none was left out.
    let count = objects(&python_of(&validator), &files).len();
    assert_eq!(said.matches(" passed ").count(), count, "{said}");
    eprintln!("{said}");
}

#[test]
fn the_manifests_agree_with_each_other_and_with_the_member() {
    let objects = objects(&python_of(&validator()), &manifest_files());

    // The mirror description is one a member accepts.
    let plan_map = named(&objects, "ConfigMap", "mirrorlab-mirror-plan");
    let dir = tempfile::tempdir().unwrap();
    let plan_file = dir.path().join("mirror.json");
    std::fs::write(
        &plan_file,
        plan_map["data"]["mirror.json"].as_str().unwrap(),
    )
    .unwrap();
    let (plan, _) = MirrorPlan::load(&plan_file).expect("the ConfigMap's mirror description");
    // The Secret ships empty: a member refuses to start with it until someone fills it in.
    let secret = named(&objects, "Secret", "mirrorlab-superuser");
    assert_eq!(secret["stringData"]["password"], "");

    let known = known_variables();
    let mut failover_labels = Vec::new();
    let mut hosts = BTreeSet::new();
    for set in of_kind(&objects, "StatefulSet") {
        let name = set["metadata"]["name"].as_str().unwrap();
        let pod = &set["spec"]["template"];
        let labels = &pod["metadata"]["labels"];
        assert!(
            selects(&set["spec"]["selector"]["matchLabels"], labels),
            "{name}"
        );
        let container = &pod["spec"]["containers"][0];
        let env = env_of(container);
        for variable in env.keys() {
            assert!(
                known.contains(variable),
                "{name}: mirrorlab reads no {variable}"
            );
        }
        // Its host name is its Service's name and one of the description's members.
        let host = &env["MIRRORLAB_HOST_NAME"];
        assert_eq!(host, name);
        // The member's name comes from it (HOST/IRIS), as the portal's default.
        let member = default_member_name(host, "IRIS");
        assert!(
            !member.is_empty() && MemberName::new(&member).is_ok(),
            "{name}: no member name from host {host}"
        );
        assert_eq!(set["spec"]["serviceName"], *host);
        let service = named(&objects, "Service", host);
        assert_eq!(service["spec"]["clusterIP"], "None", "{name}");
        assert_eq!(service["spec"]["publishNotReadyAddresses"], true, "{name}");
        assert!(selects(&service["spec"]["selector"], labels), "{name}");
        let ports: BTreeSet<i64> = service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["port"].as_i64().unwrap())
            .collect();
        assert_eq!(ports, BTreeSet::from([1972, 2188, 52773]), "{name}");
        let planned = plan
            .members
            .iter()
            .find(|m| m.host == *host)
            .unwrap_or_else(|| panic!("the mirror description has no member {host}"));
        let failover = planned
            .kind
            .as_deref()
            .is_none_or(|k| k.eq_ignore_ascii_case("failover"));
        assert_eq!(
            labels["app.kubernetes.io/component"] == "failover",
            failover
        );
        if failover {
            failover_labels.push(labels.clone());
            assert_eq!(set["spec"]["replicas"], 1, "{name}");
            assert_eq!(
                container["readinessProbe"]["httpGet"]["path"], "/mirror_status",
                "{name}"
            );
        }
        hosts.insert(host.clone());
        // It carries out the mounted description, with the Secret's password.
        let mounts: BTreeMap<String, String> = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let path = m["mountPath"].as_str().unwrap().to_string();
                (m["name"].as_str().unwrap().to_string(), path)
            })
            .collect();
        assert_eq!(env["MIRRORLAB_AUTO_MIRROR"], mounts["mirror-plan"]);
        assert!(
            env["MIRRORLAB_SUPERUSER_PASSWORD_FILE"].starts_with(&mounts["superuser"]),
            "{name}"
        );
        assert_eq!(
            mounts["data"], "/shared",
            "{name}: the image's data directory"
        );
        // Not root, and the image's own files read-only: SQLite's temporary files need /tmp.
        assert_eq!(
            pod["spec"]["securityContext"]["runAsNonRoot"], true,
            "{name}"
        );
        assert_eq!(
            container["securityContext"]["readOnlyRootFilesystem"], true,
            "{name}"
        );
        assert_eq!(mounts["tmp"], "/tmp", "{name}");
        let volumes = &pod["spec"]["volumes"];
        assert!(
            volumes.to_string().contains("mirrorlab-mirror-plan"),
            "{name}"
        );
        assert!(
            volumes.to_string().contains("mirrorlab-superuser"),
            "{name}"
        );
    }
    let planned: BTreeSet<String> = plan.members.iter().map(|m| m.host.clone()).collect();
    assert_eq!(
        hosts, planned,
        "a StatefulSet for every member of the description"
    );
    assert_eq!(failover_labels.len(), 2);

    // The arbiter is where the description says.
    let arbiter = plan.arbiter.as_deref().unwrap();
    let arbiter_host = arbiter.split(':').next().unwrap();
    named(&objects, "Service", arbiter_host);
    named(&objects, "Deployment", arbiter_host);

    // The client-facing Service reaches the failover members and nothing else.
    let primary = named(&objects, "Service", "mirrorlab-primary");
    for labels in &failover_labels {
        assert!(selects(&primary["spec"]["selector"], labels));
    }
    for other in of_kind(&objects, "StatefulSet")
        .into_iter()
        .chain(of_kind(&objects, "Deployment"))
    {
        let labels = &other["spec"]["template"]["metadata"]["labels"];
        let is_failover = labels["app.kubernetes.io/component"] == "failover";
        assert_eq!(selects(&primary["spec"]["selector"], labels), is_failover);
    }

    // Every container runs a command line the binary accepts; the liveness checks leave a
    // member whose instance is down alone; every pod keeps a node of its own.
    for workload in of_kind(&objects, "StatefulSet")
        .into_iter()
        .chain(of_kind(&objects, "Deployment"))
    {
        let name = workload["metadata"]["name"].as_str().unwrap();
        let spec = &workload["spec"]["template"]["spec"];
        let container = &spec["containers"][0];
        let args = strings(&container["args"]);
        Cli::try_parse_from(std::iter::once("mirrorlab".to_string()).chain(args.clone()))
            .unwrap_or_else(|e| panic!("{name}: mirrorlab {args:?}: {e}"));
        let liveness = strings(&container["livenessProbe"]["exec"]["command"]);
        assert_eq!(
            liveness,
            ["/usr/local/bin/mirrorlab", "ctl", "health", "--liveness"],
            "{name}"
        );
        Cli::try_parse_from(&liveness).unwrap_or_else(|e| panic!("{name}: {e}"));
        let anti = &spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            [0];
        assert_eq!(anti["topologyKey"], "kubernetes.io/hostname", "{name}");
        assert_eq!(
            anti["labelSelector"]["matchLabels"]["app.kubernetes.io/part-of"], "mirrorlab",
            "{name}"
        );
    }
}
