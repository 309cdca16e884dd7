use anyhow::Result;
use safehouse_integration::cri_env::CriEnv;
pub fn exec_sync(_e: &CriEnv) -> Result<()> {
    todo!()
}
pub fn container_log_file(_e: &CriEnv) -> Result<()> {
    todo!()
}
pub fn exit_code_and_reason(_e: &CriEnv) -> Result<()> {
    todo!()
}
pub fn stop_grace_period(_e: &CriEnv) -> Result<()> {
    todo!()
}
