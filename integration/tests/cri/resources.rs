use anyhow::Result;
use safehouse_integration::cri_env::CriEnv;
pub fn oom_killed(_e: &CriEnv) -> Result<()> {
    todo!()
}
pub fn stats(_e: &CriEnv) -> Result<()> {
    todo!()
}
pub fn update(_e: &CriEnv) -> Result<()> {
    todo!()
}
