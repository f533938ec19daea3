//! `karnna serve`: a run's page (live sampling, its loss curves) and HTTP API, on loopback
//! unless told otherwise (see `karnna-serve`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::bail;
use karnna_serve::{ServeOptions, Server};

use crate::args::CheckpointArgs;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    from: CheckpointArgs,
    /// Address to listen on. Anything but loopback lets every machine that can reach the port
    /// use the server.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Weight precision of the sampler (as `sample --precision`: the same text for the same
    /// seed needs the same precision).
    #[arg(long, value_enum, default_value = "f16")]
    precision: karnna_serve::Precision,
    /// Samples drawn at once [default: the cores / 2, at least 1]
    #[arg(long)]
    workers: Option<usize>,
    /// Requests that may wait for a free worker; beyond them a request gets 503.
    #[arg(long, default_value_t = 16)]
    queue: usize,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let dir = match &args.from.checkpoint {
        Some(file) => {
            if !file.is_file() {
                bail!("{}: no such checkpoint file", file.display());
            }
            file.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), PathBuf::from)
        }
        None => args.from.run_dir()?.path().to_owned(),
    };
    let mut opts = ServeOptions::new(dir.clone());
    opts.checkpoint = args.from.checkpoint.clone();
    opts.precision = args.precision;
    if let Some(w) = args.workers {
        if w == 0 {
            bail!("--workers must be at least 1");
        }
        opts.workers = w;
    }
    opts.queue = args.queue;
    if !args.addr.ip().is_loopback() {
        eprintln!(
            "warning: listening on {}, not on loopback: anyone who can reach this port can \
             sample from the model and read the run's checkpoint list and metrics",
            args.addr
        );
    }
    let ready = |server: &Server| {
        let list = server.checkpoints();
        let best = list.first().map_or("-", |c| c.name.as_str());
        // The first line names the address, for people and for scripts (`--addr 127.0.0.1:0`).
        // A reader that leaves after it (`| head -1`) must not stop the server: write errors
        // are ignored, where `println!` would panic on the closed pipe.
        let text = format!(
            "serving http://{}/\n  {} ({} checkpoint{}; the best: {best})\n  stop with Ctrl-C\n",
            server.local_addr(),
            dir.display(),
            list.len(),
            if list.len() == 1 { "" } else { "s" }
        );
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    };
    karnna_serve::serve_forever(args.addr, opts, ready)?;
    Ok(())
}
