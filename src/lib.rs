//! mirrorlab (library part; essay to be completed)

pub mod agent;
pub mod apps;
pub mod bench;
pub mod cli;
pub mod ctl;
pub mod error;
pub mod instance;
pub mod journal;
pub mod names;
pub mod os;
pub mod server;
pub mod storage;
pub mod util;
pub mod web;
pub mod wire;
