//! mirrorlab (library part; essay to be completed)

pub mod error;
pub mod instance;
pub mod journal;
pub mod names;
pub mod storage;
pub mod util;
