import Foundation
import Synchronization

/// How worker threads (and anyone else) hand work to the socket thread.
///
/// Events queue under a lock; the first one also writes a byte to a pipe that the socket
/// thread polls beside the ZeroMQ socket, so it wakes at once and no other thread ever
/// touches the socket.
final class Inbox: Sendable {
    typealias Event = @Sendable (ServerLoop) -> Void

    private let events = Mutex<[Event]>([])
    private let readEnd: Int32
    private let writeEnd: Int32

    init() {
        var ends: [Int32] = [0, 0]
        guard pipe(&ends) == 0 else { fatalError("pipe() failed: \(String(cString: strerror(errno)))") }
        readEnd = ends[0]
        writeEnd = ends[1]
        _ = fcntl(readEnd, F_SETFL, fcntl(readEnd, F_GETFL) | O_NONBLOCK)
        _ = fcntl(writeEnd, F_SETFL, fcntl(writeEnd, F_GETFL) | O_NONBLOCK)
    }

    deinit {
        close(readEnd)
        close(writeEnd)
    }

    /// What the socket thread polls.
    var fileDescriptor: Int32 { readEnd }

    func post(_ event: @escaping Event) {
        let wasEmpty = events.withLock { list in
            list.append(event)
            return list.count == 1
        }
        if wasEmpty {
            var byte: UInt8 = 1
            _ = write(writeEnd, &byte, 1)
        }
    }

    /// Everything posted so far, in order; empties the pipe first so no wake-up is lost.
    func drain() -> [Event] {
        var scratch = [UInt8](repeating: 0, count: 64)
        while read(readEnd, &scratch, scratch.count) > 0 {}
        return events.withLock { list in
            defer { list.removeAll() }
            return list
        }
    }
}
