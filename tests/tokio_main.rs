//! Runs `examples/tokio_main.rs` as this test's whole program (the test has
//! no libtest harness): its `main` is this binary's, so its workers are this
//! binary re-executed, as they are for the example. It fails if any task
//! does not complete, which is what happens when `run_if_worker` is called
//! inside a runtime and the handler builds its own.

#[path = "../examples/tokio_main.rs"]
mod example;

fn main() {
    if let Err(e) = example::main() {
        eprintln!("examples/tokio_main.rs failed: {e}");
        std::process::exit(1);
    }
    // Only the parent gets here: a worker exits inside run_if_worker.
    println!("1 passed, 0 failed");
}
