fn main() {
    loraplus_build::link_libtorch();
    loraplus_build::emit_libtorch_version();
}
