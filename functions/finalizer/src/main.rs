//! The finalizer Lambda function. This version does not ship it yet: the binary says so and exits
//! with an error rather than pretending to handle events. Use `imagepipe run` for local runs.

fn main() -> std::process::ExitCode {
    eprintln!("the imagepipe finalizer function is not part of this version; use `imagepipe run` locally");
    std::process::ExitCode::FAILURE
}
