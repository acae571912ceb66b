import PackagePlugin

/// Builds the XDP program (`XDP/Program/udpecho.bpf.c` of the target) with clang's BPF target, and embeds its
/// instructions and map relocations into the target as Swift source (`xdp-embed`): the server carries its program
/// and needs no file, no clang and no libbpf where it runs.
@main
struct XDPProgram: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        guard let target = target as? SourceModuleTarget else { return [] }
        let source = target.directoryURL.appending(path: "XDP/Program/udpecho.bpf.c")
        let shared = context.package.directoryURL.appending(path: "Sources/CUDPEcho/include")
        let object = context.pluginWorkDirectoryURL.appending(path: "udpecho.bpf.o")
        let swift = context.pluginWorkDirectoryURL.appending(path: "XDPProgramImage+Embedded.swift")
        let clang = try context.tool(named: "clang")
        // The kernel's UAPI headers (linux/bpf.h) and, for asm/types.h, the host's multiarch include directory.
        let multiarch = ["x86_64-linux-gnu", "aarch64-linux-gnu"].map { "-I/usr/include/\($0)" }
        return [
            .buildCommand(
                displayName: "Building the XDP program (clang -target bpf)",
                executable: clang.url,
                arguments: ["-O2", "-target", "bpf", "-Wall", "-Werror", "-I", shared.path()] + multiarch + [
                    "-c", source.path(), "-o", object.path(),
                ],
                inputFiles: [source, shared.appending(path: "xdp_shared.h")],
                outputFiles: [object]
            ),
            .buildCommand(
                displayName: "Embedding the XDP program",
                executable: try context.tool(named: "xdp-embed").url,
                arguments: [object.path(), swift.path()],
                inputFiles: [object],
                outputFiles: [swift]
            ),
        ]
    }
}
