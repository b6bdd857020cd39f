//! `tandem create-md` and `tandem dump-md`.

use anyhow::Context as _;
use engine::format::InitialData;
use engine::runtime::metadata;
use manager::config::Config;
use manager::size::ByteSize;

pub(crate) fn create(config: &Config, node: &str, volume: &str, force: bool) -> anyhow::Result<()> {
    let section = config.volume(volume).map_err(anyhow::Error::msg)?;
    let path = section.backing_for(node).map_err(anyhow::Error::msg)?;
    let created = metadata::create(
        path,
        volume,
        section.layout_params(),
        InitialData::Fresh,
        force,
    )
    .with_context(|| format!("{volume} on {}", path.display()))?;
    println!(
        "{volume}: metadata written on {} for node {node}: {} of data ({} bytes), {} of metadata",
        path.display(),
        ByteSize(created.data_bytes).human(),
        created.data_bytes,
        ByteSize(created.metadata_bytes).human(),
    );
    Ok(())
}

pub(crate) fn dump(config: &Config, node: &str, volume: &str, json: bool) -> anyhow::Result<()> {
    let section = config.volume(volume).map_err(anyhow::Error::msg)?;
    let path = section.backing_for(node).map_err(anyhow::Error::msg)?;
    let report =
        metadata::inspect(path).with_context(|| format!("{volume} on {}", path.display()))?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("encoding JSON")?
        );
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}
