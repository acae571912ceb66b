import ArgumentParser

/// The target of `ping` and `bench`: an echo server, or with `--stamp` a STAMP reflector
/// (``StampSenderOptions/target(_:)`` reads it).
struct TargetArgument: ParsableArguments {
    @Argument(
        help: ArgumentHelp(
            "The echo server, as HOST:PORT or [IPV6]:PORT; with --stamp, a STAMP reflector, with --twamp, a TWAMP server (TWAMP-Control), HOST alone meaning port 862; with --owamp, an OWAMP server, HOST alone meaning port 861.",
            valueName: "host:port"
        )
    )
    var text: String
}
