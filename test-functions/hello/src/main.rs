//! Greets, then prints its arguments and environment, one per line.
fn main() {
    println!("Hello from a WebAssembly function running under cwasi!");
    for (i, arg) in std::env::args().enumerate() {
        println!("arg[{i}]={arg}");
    }
    let mut env: Vec<_> = std::env::vars().collect();
    env.sort();
    for (key, value) in env {
        println!("env {key}={value}");
    }
}
