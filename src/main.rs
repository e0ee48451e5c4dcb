// glibc's malloc kept 20-37 MB more RSS than mimalloc at 10,000 targets (its per-thread arenas
// hold on to the churn of per-round records); measured side by side in BENCHMARKS.md (issue 15).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    vantage::cli::main()
}
