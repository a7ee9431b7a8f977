//! Subcommands of the `grip-proxy` binary other than running the proxy: [`publish`] (one item to a running
//! proxy's control API, like Pushpin's `pushpin-publish`).

pub mod publish;
