//! User-data, vendor-data and network-data, read from the Secret volumes
//! the webhook mounted, anew on every request (the kubelet updates a
//! Secret volume atomically, so a changed Secret is served once the volume
//! is updated).

use std::{
    io::{self, Read},
    path::{Path, PathBuf},
};

/// A Secret holds at most 1 MiB.
pub const MAX_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("reading {0}")]
    Read(PathBuf, #[source] io::Error),
    #[error("{0} is larger than {MAX_BYTES} bytes")]
    TooLarge(PathBuf),
}

/// Where the data is (either may be absent).
#[derive(Debug, Clone, Default)]
pub struct DataSources {
    /// `userdata`/`userData`, `vendordata`/`vendorData`, maybe `networkdata`.
    pub user_dir: Option<PathBuf>,
    /// `networkdata`/`networkData` (KubeVirt mounts it from its own Secret).
    pub network_dir: Option<PathBuf>,
}

impl DataSources {
    pub async fn user_data(&self) -> Result<Option<Vec<u8>>, DataError> {
        read_first(self.user_dir.as_deref(), &["userdata", "userData"]).await
    }

    pub async fn vendor_data(&self) -> Result<Option<Vec<u8>>, DataError> {
        read_first(self.user_dir.as_deref(), &["vendordata", "vendorData"]).await
    }

    pub async fn network_data(&self) -> Result<Option<Vec<u8>>, DataError> {
        let names = ["networkdata", "networkData"];
        match read_first(self.network_dir.as_deref(), &names).await? {
            Some(data) => Ok(Some(data)),
            None => read_first(self.user_dir.as_deref(), &names).await,
        }
    }
}

/// The first of `names` that exists in `dir`.
async fn read_first(dir: Option<&Path>, names: &[&'static str]) -> Result<Option<Vec<u8>>, DataError> {
    let Some(dir) = dir else { return Ok(None) };
    let paths: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
    tokio::task::spawn_blocking(move || {
        for path in paths {
            match std::fs::File::open(&path) {
                Ok(file) => {
                    let mut bytes = Vec::new();
                    file.take(MAX_BYTES + 1)
                        .read_to_end(&mut bytes)
                        .map_err(|e| DataError::Read(path.clone(), e))?;
                    if bytes.len() as u64 > MAX_BYTES {
                        return Err(DataError::TooLarge(path));
                    }
                    return Ok(Some(bytes));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(DataError::Read(path, e)),
            }
        }
        Ok(None)
    })
    .await
    .unwrap_or_else(|join| Err(DataError::Read(PathBuf::new(), io::Error::other(join))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_either_key_spelling_and_prefers_the_network_volume() {
        let user = tempfile::tempdir().unwrap();
        let network = tempfile::tempdir().unwrap();
        let sources = DataSources {
            user_dir: Some(user.path().to_owned()),
            network_dir: Some(network.path().to_owned()),
        };
        assert_eq!(sources.user_data().await.unwrap(), None);
        std::fs::write(user.path().join("userData"), "#cloud-config\n").unwrap();
        assert_eq!(sources.user_data().await.unwrap().as_deref(), Some(&b"#cloud-config\n"[..]));
        std::fs::write(user.path().join("userdata"), "first").unwrap();
        assert_eq!(sources.user_data().await.unwrap().as_deref(), Some(&b"first"[..]));
        std::fs::write(user.path().join("networkdata"), "from-user-secret").unwrap();
        assert_eq!(sources.network_data().await.unwrap().as_deref(), Some(&b"from-user-secret"[..]));
        std::fs::write(network.path().join("networkData"), "from-network-secret").unwrap();
        assert_eq!(sources.network_data().await.unwrap().as_deref(), Some(&b"from-network-secret"[..]));
        std::fs::write(user.path().join("vendordata"), vec![b'x'; MAX_BYTES as usize + 1]).unwrap();
        assert!(matches!(sources.vendor_data().await, Err(DataError::TooLarge(_))));
        assert_eq!(DataSources::default().user_data().await.unwrap(), None);
    }
}
