//! Packs files (a `.wasm` module and whatever it reads) into an OCI image
//! layout tarball: `oci-layout`, `index.json` and `blobs/sha256/*`, with one
//! uncompressed tar layer and an image config for platform `wasip1/wasm`.
//!
//! ```no_run
//! let image = cwasi_image::ImageSpec::new("docker.io/cwasi/hello:latest")
//!     .file("/hello.wasm", std::fs::read("hello.wasm")?)
//!     .entrypoint(["/hello.wasm"]);
//! image.write_tar(std::path::Path::new("hello.tar"))?;
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, bail};
use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, Digest, ImageConfigurationBuilder, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, Os, PlatformBuilder, RootFsBuilder, Sha256Digest,
};
use sha2::{Digest as _, Sha256};

/// containerd names an imported image after this annotation of the index.
const IMAGE_NAME_ANNOTATION: &str = "io.containerd.image.name";
const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// The image to build.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    name: String,
    files: Vec<(String, Vec<u8>)>,
    entrypoint: Vec<String>,
    env: Vec<String>,
    labels: HashMap<String, String>,
    /// (os, architecture) the image is published for; `wasip1/wasm` first.
    platforms: Vec<(String, String)>,
}

impl ImageSpec {
    /// `name` is a full reference, e.g. `docker.io/cwasi/hello:latest`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            files: Vec::new(),
            entrypoint: Vec::new(),
            env: Vec::new(),
            labels: HashMap::new(),
            platforms: vec![("wasip1".to_owned(), "wasm".to_owned())],
        }
    }

    /// Also publishes the image for `os/architecture` (same layer): the CRI
    /// plugin of containerd 1.6/1.7 unpacks images for the node's platform
    /// only, so images for Kubernetes need e.g. `linux/amd64` too.
    pub fn also_for_platform(mut self, os: &str, architecture: &str) -> Self {
        self.platforms.push((os.to_owned(), architecture.to_owned()));
        self
    }

    /// Adds a file at an absolute path of the image.
    pub fn file(mut self, path_in_image: impl Into<String>, contents: Vec<u8>) -> Self {
        self.files.push((path_in_image.into(), contents));
        self
    }

    pub fn entrypoint<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.entrypoint = args.into_iter().map(Into::into).collect();
        self
    }

    pub fn env(mut self, key_value: impl Into<String>) -> Self {
        self.env.push(key_value.into());
        self
    }

    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Writes the OCI image layout as a tarball at `out`.
    pub fn write_tar(&self, out: &Path) -> anyhow::Result<()> {
        let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut writer = BufWriter::new(file);
        self.write_to(&mut writer)?;
        writer.flush().with_context(|| format!("writing {}", out.display()))?;
        Ok(())
    }

    fn write_to(&self, out: impl Write) -> anyhow::Result<()> {
        let layer = self.layer_tar()?;
        let layer_digest = sha256(&layer);
        let mut blobs: Vec<(Digest, Vec<u8>)> = Vec::new();
        let mut manifests = Vec::new();
        for (os, architecture) in &self.platforms {
            let (manifest_desc, config_json, manifest_json) =
                self.manifest_for(os, architecture, &layer, &layer_digest)?;
            blobs.push((sha256(&config_json), config_json));
            blobs.push((manifest_desc.digest().clone(), manifest_json));
            manifests.push(manifest_desc);
        }
        blobs.push((layer_digest, layer));

        let tag = self.name.rsplit_once(':').map_or("latest", |(_, tag)| tag);
        let name_annotations = HashMap::from([
            (IMAGE_NAME_ANNOTATION.to_owned(), self.name.clone()),
            (REF_NAME_ANNOTATION.to_owned(), tag.to_owned()),
        ]);
        // One platform: the manifest is the image. Several: a nested index
        // lists them, and the image is that index.
        let image_desc = if let [single] = manifests.as_slice() {
            let mut desc = single.clone();
            desc.set_platform(None);
            desc.set_annotations(Some(name_annotations));
            desc
        } else {
            let nested = ImageIndexBuilder::default()
                .schema_version(2u32)
                .media_type(MediaType::ImageIndex)
                .manifests(manifests)
                .build()?;
            let nested_json = nested.to_string()?.into_bytes();
            let desc = DescriptorBuilder::default()
                .media_type(MediaType::ImageIndex)
                .size(nested_json.len() as u64)
                .digest(sha256(&nested_json))
                .annotations(name_annotations)
                .build()?;
            blobs.push((desc.digest().clone(), nested_json));
            desc
        };
        let index = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(vec![image_desc])
            .build()?;

        let mut archive = tar::Builder::new(out);
        append(&mut archive, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        append(&mut archive, "index.json", index.to_string()?.as_bytes())?;
        append_dir(&mut archive, "blobs/")?;
        append_dir(&mut archive, "blobs/sha256/")?;
        for (digest, blob) in &blobs {
            append(&mut archive, &format!("blobs/sha256/{}", digest.digest()), blob)?;
        }
        archive.finish().context("finishing the image tarball")?;
        Ok(())
    }

    /// The image config and manifest for one platform; returns the
    /// manifest's descriptor (with its platform) and both blobs.
    fn manifest_for(
        &self,
        os: &str,
        architecture: &str,
        layer: &[u8],
        layer_digest: &Digest,
    ) -> anyhow::Result<(Descriptor, Vec<u8>, Vec<u8>)> {
        let config = ImageConfigurationBuilder::default()
            .architecture(Arch::from(architecture))
            .os(Os::from(os))
            .rootfs(RootFsBuilder::default().typ("layers").diff_ids(vec![layer_digest.to_string()]).build()?)
            .config(
                ConfigBuilder::default()
                    .entrypoint(self.entrypoint.clone())
                    .env(self.env.clone())
                    .labels(self.labels.clone())
                    .build()?,
            )
            .build()?;
        let config_json = config.to_string()?.into_bytes();
        let config_desc = Descriptor::new(MediaType::ImageConfig, config_json.len() as u64, sha256(&config_json));
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(config_desc)
            .layers(vec![Descriptor::new(MediaType::ImageLayer, layer.len() as u64, layer_digest.clone())])
            .build()?;
        let manifest_json = manifest.to_string()?.into_bytes();
        let platform = PlatformBuilder::default().os(Os::from(os)).architecture(Arch::from(architecture)).build()?;
        let desc = DescriptorBuilder::default()
            .media_type(MediaType::ImageManifest)
            .size(manifest_json.len() as u64)
            .digest(sha256(&manifest_json))
            .platform(platform)
            .build()?;
        Ok((desc, config_json, manifest_json))
    }

    /// The single filesystem layer: the files, with their parent directories.
    fn layer_tar(&self) -> anyhow::Result<Vec<u8>> {
        let mut dirs = BTreeSet::new();
        for (path, _) in &self.files {
            if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
                bail!("image path {path:?} must be absolute and free of '..'");
            }
            let mut parent = Path::new(path.trim_start_matches('/')).parent();
            while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
                dirs.insert(format!("{}/", dir.display()));
                parent = dir.parent();
            }
        }
        let mut layer = tar::Builder::new(Vec::new());
        for dir in &dirs {
            append_dir(&mut layer, dir)?;
        }
        for (path, contents) in &self.files {
            append(&mut layer, path.trim_start_matches('/'), contents)?;
        }
        Ok(layer.into_inner()?)
    }
}

fn sha256(bytes: &[u8]) -> Digest {
    let hex = hex::encode(Sha256::digest(bytes));
    let digest: Sha256Digest = hex.parse().expect("a sha256 hex string is a valid digest");
    digest.into()
}

fn append(archive: &mut tar::Builder<impl Write>, path: &str, data: &[u8]) -> anyhow::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    archive.append_data(&mut header, path, data).with_context(|| format!("adding {path} to the tarball"))
}

fn append_dir(archive: &mut tar::Builder<impl Write>, path: &str) -> anyhow::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_size(0);
    header.set_mode(0o755);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Directory);
    archive.append_data(&mut header, path, std::io::empty()).with_context(|| format!("adding {path} to the tarball"))
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn layout_has_index_blobs_and_the_module() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("img.tar");
        ImageSpec::new("docker.io/cwasi/t:v1")
            .file("/app/t.wasm", b"\0asm\x01\0\0\0".to_vec())
            .entrypoint(["/app/t.wasm"])
            .write_tar(&out)
            .unwrap();

        let mut names = HashMap::new();
        let mut archive = tar::Archive::new(File::open(&out).unwrap());
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            names.insert(entry.path().unwrap().display().to_string(), data);
        }
        let index: serde_json::Value = serde_json::from_slice(&names["index.json"]).unwrap();
        let manifest = &index["manifests"][0];
        assert_eq!(manifest["annotations"][IMAGE_NAME_ANNOTATION], "docker.io/cwasi/t:v1");
        assert_eq!(manifest["annotations"][REF_NAME_ANNOTATION], "v1");
        // Every blob is stored under its own digest.
        for (name, data) in names.iter().filter(|(n, _)| n.starts_with("blobs/sha256/") && !n.ends_with('/')) {
            assert_eq!(name.trim_start_matches("blobs/sha256/"), hex::encode(Sha256::digest(data)));
        }
        let manifest_blob =
            &names[&format!("blobs/sha256/{}", manifest["digest"].as_str().unwrap().trim_start_matches("sha256:"))];
        let manifest: serde_json::Value = serde_json::from_slice(manifest_blob).unwrap();
        let config_blob = &names
            [&format!("blobs/sha256/{}", manifest["config"]["digest"].as_str().unwrap().trim_start_matches("sha256:"))];
        let config: serde_json::Value = serde_json::from_slice(config_blob).unwrap();
        assert_eq!(config["os"], "wasip1");
        assert_eq!(config["architecture"], "wasm");
        assert_eq!(config["config"]["Entrypoint"][0], "/app/t.wasm");
    }

    #[test]
    fn several_platforms_make_a_nested_index_of_one_manifest_each() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("img.tar");
        ImageSpec::new("docker.io/cwasi/t:v1")
            .file("/t.wasm", b"\0asm\x01\0\0\0".to_vec())
            .also_for_platform("linux", "amd64")
            .write_tar(&out)
            .unwrap();
        let mut blobs = HashMap::new();
        let mut archive = tar::Archive::new(File::open(&out).unwrap());
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            blobs.insert(entry.path().unwrap().display().to_string(), data);
        }
        let blob = |digest: &serde_json::Value| -> serde_json::Value {
            let name = format!("blobs/sha256/{}", digest.as_str().unwrap().trim_start_matches("sha256:"));
            serde_json::from_slice(&blobs[&name]).unwrap()
        };
        let index: serde_json::Value = serde_json::from_slice(&blobs["index.json"]).unwrap();
        assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
        let nested = blob(&index["manifests"][0]["digest"]);
        let platforms: Vec<String> = nested["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                format!("{}/{}", m["platform"]["os"].as_str().unwrap(), m["platform"]["architecture"].as_str().unwrap())
            })
            .collect();
        assert_eq!(platforms, ["wasip1/wasm", "linux/amd64"]);
        let linux = blob(&nested["manifests"][1]["digest"]);
        assert_eq!(blob(&linux["config"]["digest"])["os"], "linux");
    }

    #[test]
    fn refuses_relative_or_escaping_paths() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("img.tar");
        assert!(ImageSpec::new("x:1").file("rel.wasm", vec![]).write_tar(&out).is_err());
        assert!(ImageSpec::new("x:1").file("/a/../b", vec![]).write_tar(&out).is_err());
    }
}
