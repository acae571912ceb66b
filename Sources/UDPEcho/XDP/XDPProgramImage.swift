/// The XDP programs as the package's build made them from `XDP/Program/udpecho.bpf.c` (the `XDPProgram` build plugin
/// embeds them): each program's instructions and which of them load which map, and the maps.
struct XDPProgramImage: Sendable {
    /// "xdp", the program attached to the interface, and the programs it reaches by tail calls ("xdp/...").
    let programs: [XDPProgramSection]
    let maps: [XDPMapDefinition]

    /// The index of the map named `name`.
    func map(_ name: String) -> Int? { self.maps.firstIndex { $0.name == name } }

    /// The program named `name`.
    func program(_ name: String) -> XDPProgramSection? { self.programs.first { $0.name == name } }
}

/// One program: its section's instructions and relocations.
struct XDPProgramSection: Sendable {
    let name: String
    /// The instructions, 8 bytes each, as hex digits.
    let instructions: StaticString
    let relocations: [XDPRelocation]

    /// The instructions as bytes.
    var bytes: [UInt8] {
        let digits = self.instructions.withUTF8Buffer { Array($0) }
        func value(_ digit: UInt8) -> UInt8 { digit >= 0x61 ? digit - 0x61 + 10 : digit - 0x30 }
        return stride(from: 0, to: digits.count - 1, by: 2).map { value(digits[$0]) << 4 | value(digits[$0 + 1]) }
    }
}

/// A map of the program: what the loader makes before it loads the program.
struct XDPMapDefinition: Sendable {
    var name: String
    var type: UInt32
    var keySize: UInt32
    var valueSize: UInt32
    var maxEntries: UInt32
    var flags: UInt32
}

/// An instruction that loads a map's address (a 16-byte `ld_imm64`): the loader writes the map's descriptor into it.
struct XDPRelocation: Sendable {
    var instruction: Int
    var map: Int
}
