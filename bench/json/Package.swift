// swift-tools-version: 6.1
// The JSON micro-benchmark (issue #10): our parser and writer against Foundation's on job.json-sized documents.
// A package of its own, so the main build never compiles it: `swift run -c release --package-path bench/json`.
import Foundation
import PackageDescription

// A path dependency is known by its directory's name, which is whatever the clone was called.
let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

let package = Package(
    name: "json-bench",
    dependencies: [.package(path: "../..")],
    targets: [
        .executableTarget(name: "json-bench", dependencies: [
            .product(name: "Spool", package: root.lastPathComponent.lowercased()),
            .product(name: "Wire", package: root.lastPathComponent.lowercased()),
        ])
    ]
)
