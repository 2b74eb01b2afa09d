#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error(transparent)]
    Infra(#[from] imgpipe_infra::InfraError),
    #[error("invalid variant spec: {0}")]
    Spec(String),
    #[error("ops endpoint: {0}")]
    Io(#[from] std::io::Error),
}
