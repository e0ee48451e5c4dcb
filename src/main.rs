fn main() -> std::process::ExitCode {
    vantage::cli::main()
}
