import Foundation
import TestSupport
import Testing

/// The tools dev/test installs from PyPI into venvs: the original client (`balsam==0.7.0a24`) and schemathesis.
enum PythonTools {
    static let environment = ProcessInfo.processInfo.environment
    /// The venv's python with the original client.
    static let clientPython = environment["BALSAM_CLIENT_PYTHON"]
    /// schemathesis's `st`.
    static let schemathesis = environment["BALSAM_SCHEMATHESIS"]
    /// In CI the tools must be there: a missing one fails instead of skipping.
    static let required = environment["CI"] != nil

    static var scriptPath: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("client/original_client_test.py").path
    }
}

/// Runs a program on a thread of its own: a long blocking wait must not hold one of the test pool's threads.
func runOffPool(
    _ program: String, _ args: [String], env: [String: String] = [:], cwd: String? = nil, timeout: Double = 300,
    stdin: Data? = nil
) async throws -> (status: Int32, stdout: String, stderr: String) {
    try await offPool { try run(program, args, stdin: stdin, env: env, cwd: cwd, timeout: timeout) }
}

/// Runs blocking work (a `Pusher` round against a server in this process) on a thread of its own: on a pool of
/// two threads, two such waits would leave none to serve them (the requests timed out).
func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try body() }) }.start()
    }
}

@Suite struct ClientTests {
    @Test(
        "the original Python client: the seed's calls, filters, as_completed/result, isolation; then schemathesis",
        .enabled(if: PythonTools.clientPython != nil || PythonTools.required, "dev/test makes the client's venv"),
        arguments: Backend.available)
    func originalClient(_ backend: Backend) async throws {
        let python = try #require(PythonTools.clientPython, "BALSAM_CLIENT_PYTHON is not set (dev/test sets it)")
        let server = try await LiveServer(backend)
        defer { Task { try? await server.stop() } }
        let result = try await runOffPool(
            python, [PythonTools.scriptPath], env: ["BALSAM_TEST_SERVER": server.url, "PYTHONUNBUFFERED": "1"])
        #expect(
            result.status == 0,
            "client test failed:\n\(result.stdout)\n\(result.stderr)\nserver log:\n\(server.log.suffix(4000))")
        #expect(result.stdout.contains("original client: all checks passed"))
        #expect(!server.log.contains("status=500"), "the server answered 500:\n\(server.log.suffix(4000))")

        // On the data the client left, a bounded schemathesis run: no 5xx, every reply as the document says.
        guard let st = PythonTools.schemathesis ?? (PythonTools.required ? "" : nil) else { return }
        try #require(!st.isEmpty, "BALSAM_SCHEMATHESIS is not set (dev/test sets it)")
        let token = try await server.login("alice", "alice-password-1")
        let checked = try await runOffPool(
            st,
            [
                "--no-color", "run", server.url + "/openapi.json", "-H", "Authorization: Bearer \(token)",
                "--max-examples", "8",
                "--checks",
                "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
                "--phases", "examples,fuzzing", "--generation-deterministic",
            ], cwd: server.dir.path, timeout: 600)  // its cache goes into the test's directory, not the package
        #expect(checked.status == 0, "schemathesis found failures:\n\(checked.stdout.suffix(6000))\n\(checked.stderr)")
    }
}
