//! STUB (replaced by the real module on merge).
#![allow(missing_docs, dead_code, unused_variables)]
use std::net::IpAddr;
pub const MAIN_TABLE: u32 = 254;
pub fn resolve_table(s: &str) -> Result<u32, RoutedError> {
    todo!()
}
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Family {
    V4,
    V6,
}
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IifRule {
    pub family: Family,
    pub iif: String,
    pub table: u32,
    pub priority: Option<u32>,
}
impl crate::Rtnl {
    pub fn iif_rules(&mut self, ifname: &str) -> Result<Vec<IifRule>, RoutedError> {
        todo!()
    }
    pub fn add_iif_rule(
        &mut self,
        family: Family,
        ifname: &str,
        table: u32,
    ) -> Result<(), RoutedError> {
        todo!()
    }
    pub fn del_rule(&mut self, rule: &IifRule) -> Result<bool, RoutedError> {
        todo!()
    }
    pub fn replace_host_route(
        &mut self,
        ip: IpAddr,
        table: u32,
        oif: u32,
    ) -> Result<(), RoutedError> {
        todo!()
    }
    pub fn host_route(&mut self, ip: IpAddr, table: u32, oif: u32) -> Result<bool, RoutedError> {
        todo!()
    }
    pub fn del_host_route(
        &mut self,
        ip: IpAddr,
        table: u32,
        oif: u32,
    ) -> Result<bool, RoutedError> {
        todo!()
    }
}
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Sysctl {
    ProxyArp,
    Forwarding4,
    ProxyNdp,
    Forwarding6,
}
pub fn read_sysctl(ifname: &str, which: Sysctl) -> Result<bool, RoutedError> {
    todo!()
}
pub fn write_sysctl(ifname: &str, which: Sysctl, on: bool) -> Result<(), RoutedError> {
    todo!()
}
#[derive(Debug, thiserror::Error)]
pub enum RoutedError {
    #[error("x")]
    X,
}
impl RoutedError {
    pub fn is_invalid_input(&self) -> bool {
        false
    }
}
