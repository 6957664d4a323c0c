use clap::Args;
#[derive(Args)]
pub struct ChatArgs {}
pub async fn run(_a: ChatArgs) -> anyhow::Result<()> {
    Ok(())
}
