// include_dir! does not tell cargo which files it read: rebuild when the
// console's build output changes (cargo scans a directory recursively).
fn main() {
    println!("cargo:rerun-if-changed=../../console/dist");
}
