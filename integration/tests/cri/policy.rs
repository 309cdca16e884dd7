use anyhow::Result;
use safehouse_integration::cri_env::CriEnv;
pub fn annotation_selects_policy(_e: &CriEnv) -> Result<()> {
    todo!()
}
pub fn unusable_policy_fails(_e: &CriEnv) -> Result<()> {
    todo!()
}
