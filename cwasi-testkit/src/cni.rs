//! A CNI network for pods of a CRI test rig that keeps every packet inside
//! namespaces the test created: a bridge with no address on the host
//! (`isGateway: false`, no masquerading), so the host has no route into the
//! private subnet and nothing leaves it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where Debian's `containernetworking-plugins` installs the plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// The private subnet pods get their addresses from.
pub const POD_SUBNET: &str = "10.231.0.0/24";

/// The bridge conflist of one rig; dropping it deletes the bridge the
/// plugin created (the pods' veth ends go with their network namespaces).
pub struct CniNetwork {
    conf_dir: PathBuf,
    bridge: String,
}

impl CniNetwork {
    /// Writes the conflist under `rig_dir`; the bridge name derives from the
    /// rig directory's unique suffix, so concurrent rigs never share one.
    pub(crate) fn write(rig_dir: &Path) -> anyhow::Result<Self> {
        let suffix: String = rig_dir
            .file_name()
            .map(|n| n.to_string_lossy().chars().rev().filter(char::is_ascii_alphanumeric).take(8).collect())
            .unwrap_or_default();
        // Interface names have at most 15 bytes.
        let bridge = format!("cwbr{suffix}");
        let conf_dir = rig_dir.join("cni");
        fs::create_dir_all(&conf_dir)?;
        // host-local keeps its allocations in the rig (`dataDir`), not in /var/lib/cni.
        let conflist = format!(
            r#"{{
  "cniVersion": "0.4.0",
  "name": "cwasi-test",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "{bridge}",
      "isGateway": false,
      "ipMasq": false,
      "ipam": {{
        "type": "host-local",
        "ranges": [[{{ "subnet": "{POD_SUBNET}" }}]],
        "dataDir": "{data_dir}"
      }}
    }},
    {{ "type": "loopback" }}
  ]
}}
"#,
            data_dir = rig_dir.join("cni-ipam").display(),
        );
        fs::write(conf_dir.join("10-cwasi-test.conflist"), conflist)?;
        Ok(Self { conf_dir, bridge })
    }

    /// The directory for the CRI plugin's `conf_dir`.
    pub fn conf_dir(&self) -> &Path {
        &self.conf_dir
    }

    /// The bridge's link name.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }
}

impl Drop for CniNetwork {
    fn drop(&mut self) {
        // Absent when no pod ever joined the network: nothing to do then.
        if Path::new("/sys/class/net").join(&self.bridge).exists() {
            let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
        }
    }
}
