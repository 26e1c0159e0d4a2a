//! The files in `deploy/` say what users apply; check the fields cwasi relies on.

use std::collections::HashMap;

use cwasi_comm::FunctionConfig;
use cwasi_testkit::workspace_root;
use serde_yaml::Value;

fn documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(workspace_root().join(path)).unwrap();
    serde_yaml::Deserializer::from_str(&text).map(|doc| serde::Deserialize::deserialize(doc).unwrap()).collect()
}

#[test]
fn runtime_class_names_the_cwasi_handler() {
    let docs = documents("deploy/runtimeclass.yaml");
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0]["apiVersion"], "node.k8s.io/v1");
    assert_eq!(docs[0]["kind"], "RuntimeClass");
    assert_eq!(docs[0]["metadata"]["name"], "cwasi");
    assert_eq!(docs[0]["handler"], "cwasi");
}

#[test]
fn example_workflow_pods_use_the_runtime_class_and_valid_cwasi_annotations() {
    let docs = documents("deploy/examples/workflow.yaml");
    assert!(docs.len() >= 2);
    for doc in &docs {
        let kind = doc["kind"].as_str().unwrap();
        assert!(matches!(kind, "Deployment" | "Job"), "{kind}");
        let template = &doc["spec"]["template"];
        assert_eq!(template["spec"]["runtimeClassName"], "cwasi", "{doc:?}");
        let annotations: HashMap<String, String> =
            serde_yaml::from_value(template["metadata"]["annotations"].clone()).unwrap();
        // The shim would refuse a container with a malformed cwasi.io annotation.
        FunctionConfig::from_annotations(&annotations, "default", "node").unwrap();
        let container = &template["spec"]["containers"][0];
        assert!(container["image"].as_str().is_some_and(|i| !i.is_empty()), "{doc:?}");
        assert!(container["command"][0].as_str().is_some_and(|c| c.ends_with(".wasm")), "{doc:?}");
    }
}

#[test]
fn containerd_snippets_register_the_runtime_with_annotation_passthrough() {
    for (path, plugin) in [
        ("deploy/containerd/cwasi-runtime-1.6.toml", "io.containerd.grpc.v1.cri"),
        ("deploy/containerd/cwasi-runtime-2.x.toml", "io.containerd.cri.v1.runtime"),
    ] {
        let config: toml::Value = std::fs::read_to_string(workspace_root().join(path)).unwrap().parse().unwrap();
        let runtime = &config["plugins"][plugin]["containerd"]["runtimes"]["cwasi"];
        assert_eq!(runtime["runtime_type"].as_str(), Some("io.containerd.cwasi.v1"), "{path}");
        assert_eq!(runtime["pod_annotations"][0].as_str(), Some("cwasi.io/*"), "{path}");
    }
}

#[test]
fn metrics_daemonset_serves_the_node_tool_where_its_scrape_annotations_point() {
    let docs = documents("deploy/metrics/cwasi-metrics.yaml");
    assert_eq!(docs.len(), 1);
    let set = &docs[0];
    assert_eq!(set["kind"].as_str(), Some("DaemonSet"));
    let template = &set["spec"]["template"];
    let annotations = &template["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    let port = annotations["prometheus.io/port"].as_str().unwrap();
    let container = &template["spec"]["containers"][0];
    let command: Vec<&str> = container["command"].as_sequence().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(&command[1..3], ["metrics", "--listen"]);
    assert_eq!(command[3], format!("0.0.0.0:{port}"));
    assert_eq!(container["ports"][0]["containerPort"].as_u64().map(|p| p.to_string()).as_deref(), Some(port));
    // It reads the run directory the shim writes (CWASI_RUN_DIR's default).
    let run_dir = command.iter().position(|a| *a == "--run-dir").map(|i| command[i + 1]);
    assert_eq!(run_dir, Some(cwasi_comm::registry::DEFAULT_RUN_DIR));
}
