//! STUB (replaced by the real module on merge).
#![allow(missing_docs, dead_code, unused_variables)]
use crate::VlanSpec;
use std::path::{Path, PathBuf};
use std::time::Duration;
pub struct Ovs {
    program: PathBuf,
    db: PathBuf,
    timeout: Duration,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvsPort {
    pub name: String,
    pub bridge: String,
    pub tag: Option<u16>,
    pub trunks: Vec<u16>,
    pub vlan_mode: Option<String>,
}
#[derive(Debug, thiserror::Error)]
pub enum OvsError {
    #[error("no such bridge {0}")]
    NoSuchBridge(String),
}
impl OvsError {
    pub fn is_invalid_input(&self) -> bool {
        false
    }
}
impl Ovs {
    pub fn from_env() -> Self {
        todo!()
    }
    pub fn db(self, path: impl Into<PathBuf>) -> Self {
        todo!()
    }
    pub fn db_path(&self) -> &Path {
        todo!()
    }
    pub fn bridge_exists(&self, bridge: &str) -> Result<bool, OvsError> {
        todo!()
    }
    pub fn port(&self, port: &str) -> Result<Option<OvsPort>, OvsError> {
        todo!()
    }
    pub fn add_port(
        &self,
        bridge: &str,
        port: &str,
        vlan: Option<&VlanSpec>,
    ) -> Result<Option<OvsPort>, OvsError> {
        todo!()
    }
    pub fn del_port(&self, bridge: &str, port: &str) -> Result<bool, OvsError> {
        todo!()
    }
}
