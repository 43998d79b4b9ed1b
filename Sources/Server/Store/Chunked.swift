/// Statements are made per chunk of their items: a multi-row INSERT or an `IN` list stays under the database's
/// limit of parameters (`SQLConnection.rowsPerStatement`).
extension Array {
    /// Consecutive slices of at most `size` elements.
    func chunked(_ size: Int) -> [ArraySlice<Element>] {
        stride(from: 0, to: count, by: Swift.max(1, size)).map { self[$0..<Swift.min($0 + size, count)] }
    }
}
