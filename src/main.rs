fn main() {
    std::process::exit(dermaedge::cli::main());
}
