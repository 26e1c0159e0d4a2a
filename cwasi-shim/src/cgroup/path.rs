//! `linux.cgroupsPath` in its two forms, turned into a path relative to a
//! hierarchy's root.

use std::path::{Component, Path, PathBuf};

use anyhow::{bail, ensure};

/// The container's cgroup, relative to the root of every hierarchy.
///
/// - cgroupfs form (`/default/ID`, what `ctr` and containerd's cgroupfs
///   driver send): taken as is, relative to the hierarchy root as runc does;
/// - systemd form (`slice:prefix:name`, what kubelet's systemd driver sends):
///   the slice is expanded the way systemd nests slices
///   (`kubepods-burstable-pod1.slice` lives in `kubepods.slice/kubepods-burstable.slice/`)
///   and the unit is `prefix-name.scope`. The directories are created
///   directly in cgroupfs; no systemd unit is registered over D-Bus.
pub fn relative_cgroup_path(cgroups_path: Option<&Path>, container_id: &str) -> anyhow::Result<PathBuf> {
    let Some(path) = cgroups_path.filter(|p| !p.as_os_str().is_empty()) else {
        // runc also gives a container without a path a cgroup of its own.
        return Ok(PathBuf::from("cwasi").join(container_id));
    };
    let text = path.to_str().ok_or_else(|| anyhow::anyhow!("linux.cgroupsPath is not UTF-8"))?;
    let relative = match systemd_form(text) {
        Some((slice, prefix, name)) => systemd_path(slice, prefix, name)?,
        None => text.trim_start_matches('/').into(),
    };
    ensure!(
        relative.components().all(|c| matches!(c, Component::Normal(_))) && relative.components().next().is_some(),
        "linux.cgroupsPath {text:?} must name a cgroup below the hierarchy root, without '..'"
    );
    Ok(relative)
}

fn systemd_form(text: &str) -> Option<(&str, &str, &str)> {
    if text.starts_with('/') {
        return None;
    }
    let mut parts = text.split(':');
    let (slice, prefix, name) = (parts.next()?, parts.next()?, parts.next()?);
    parts.next().is_none().then_some((slice, prefix, name))
}

fn systemd_path(slice: &str, prefix: &str, name: &str) -> anyhow::Result<PathBuf> {
    let slice = if slice.is_empty() { "system.slice" } else { slice };
    let mut path = expand_slice(slice)?;
    if name.ends_with(".slice") {
        path.push(name);
    } else if prefix.is_empty() {
        path.push(format!("{name}.scope"));
    } else {
        path.push(format!("{prefix}-{name}.scope"));
    }
    Ok(path)
}

/// `a-b-c.slice` -> `a.slice/a-b.slice/a-b-c.slice` (systemd's rule for nested slices).
fn expand_slice(slice: &str) -> anyhow::Result<PathBuf> {
    let Some(stem) = slice.strip_suffix(".slice") else {
        bail!("linux.cgroupsPath: systemd slice {slice:?} must end in .slice");
    };
    ensure!(!stem.contains('/'), "linux.cgroupsPath: systemd slice {slice:?} must not contain '/'");
    if stem == "-" {
        return Ok(PathBuf::new());
    }
    ensure!(
        !stem.is_empty() && !stem.starts_with('-') && !stem.ends_with('-') && !stem.contains("--"),
        "linux.cgroupsPath: invalid systemd slice {slice:?}"
    );
    let mut path = PathBuf::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(path: &str) -> anyhow::Result<PathBuf> {
        relative_cgroup_path(Some(Path::new(path)), "c1")
    }

    #[test]
    fn cgroupfs_paths_are_relative_to_the_hierarchy_root() {
        assert_eq!(rel("/default/c1").unwrap(), Path::new("default/c1"));
        assert_eq!(rel("kubepods/besteffort/pod1/c1").unwrap(), Path::new("kubepods/besteffort/pod1/c1"));
        assert_eq!(relative_cgroup_path(None, "c1").unwrap(), Path::new("cwasi/c1"));
        assert!(rel("/default/../../etc").is_err());
        assert!(rel("/").is_err());
    }

    #[test]
    fn systemd_paths_expand_slices_and_name_a_scope() {
        assert_eq!(
            rel("kubepods-burstable-pod1.slice:cri-containerd:abc").unwrap(),
            Path::new("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-abc.scope")
        );
        assert_eq!(rel(":cri-containerd:abc").unwrap(), Path::new("system.slice/cri-containerd-abc.scope"));
        assert_eq!(rel("-.slice::abc").unwrap(), Path::new("abc.scope"));
        assert!(rel("kubepods:cri:abc").is_err());
        assert!(rel("a--b.slice:cri:abc").is_err());
    }
}
