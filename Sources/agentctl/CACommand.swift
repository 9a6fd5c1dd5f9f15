import ArgumentParser

struct CACommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ca",
        abstract: "Make the offline root and node intermediate certificate authorities."
    )
}
