/// The processor's error: what stops it starting or running. The crate's two other thiserror
/// types are outcomes of one image rather than failures of the processor, and stay apart from
/// it on purpose: [`crate::render::RenderError`] (the image cannot be rendered; it becomes
/// `ImageFailed` with its reason code, and the record is done) and
/// [`crate::color::UnusableProfile`] (an ICC profile was ignored; the render goes on).
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error(transparent)]
    Infra(#[from] imgpipe_infra::InfraError),
    #[error("invalid variant spec: {0}")]
    Spec(String),
    #[error("ops endpoint: {0}")]
    Io(#[from] std::io::Error),
}
