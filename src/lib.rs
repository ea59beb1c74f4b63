//! cutover: migrates an organisation's mail from a legacy IMAP server to Office 365
//! (or any IMAP destination) and keeps it in sync until the MX cutover.
//!
//! Data flows one way: [`source`] reads the legacy server into the [`spool`], and
//! [`upstream`] pushes the spool to the destination. The spool is the only place state
//! lives, so each side can stop, crash or restart without the other losing anything.

pub mod accounts;
pub mod budget;
pub mod cli;
pub mod config;
pub mod cutover;
pub mod daemon;
pub mod demo;
pub mod details;
pub mod duration;
pub mod engine;
pub mod export;
pub mod fleet;
pub mod imap;
pub mod legacy_servers;
pub mod logging;
pub mod mapping;
pub mod metrics;
pub mod notify;
pub mod oauth;
pub mod progress;
pub mod secret;
pub mod source;
pub mod spool;
pub mod testbed;
pub mod throttle;
pub mod upstream;
pub mod web;
