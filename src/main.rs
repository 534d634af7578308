fn main() -> std::process::ExitCode {
    petct_node::cli::main()
}
