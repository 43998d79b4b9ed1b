/// What is wrong with one field of a message between a client and the server, or between a site and the
/// server: a sentence and the field it is about, named with its place in the message (`jobs[3].num_nodes`).
///
/// The server answers it as a 400 naming the field; a push's item that has one is refused on its own (a
/// `SyncRefusal` with code `invalid`) and the rest of the push is taken.
public struct WireError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A sentence saying what is wrong.
    public var message: String
    /// The field involved, if one.
    public var field: String?

    /// Makes an error.
    public init(_ message: String, field: String? = nil) {
        self.message = message
        self.field = field
    }

    public var description: String { field.map { "\($0): \(message)" } ?? message }
}
