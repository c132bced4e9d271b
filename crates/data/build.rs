fn main() {
    loraplus_build::link_libtorch();
}
