import CZMQ
#if canImport(Glibc)
import Glibc
#endif

/// A ZeroMQ failure: the call that failed and libzmq's reason.
public struct ZMQError: Error, Sendable, CustomStringConvertible {
    public let call: String
    public let errno: Int32
    public var description: String { "\(call): \(String(cString: zmq_strerror(errno)))" }

    init(_ call: String) {
        self.call = call
        self.errno = zmq_errno()
    }

    public var isTimeout: Bool { errno == EAGAIN }
    public var isInterrupted: Bool { errno == EINTR }
}

/// The process's ZeroMQ context: one is enough, and libzmq makes it safe to share.
public final class ZMQContext: @unchecked Sendable {
    public static let shared = ZMQContext()
    let handle: UnsafeMutableRawPointer

    private init() {
        guard let handle = zmq_ctx_new() else { fatalError("zmq_ctx_new failed: \(ZMQError("zmq_ctx_new"))") }
        self.handle = handle
    }
}

/// One ZeroMQ socket. Not thread-safe, as libzmq's sockets are not: a socket belongs to
/// the thread that uses it, and is closed when released.
public final class ZMQSocket {
    public enum Kind: Int32 {
        case router = 6, dealer = 5, req = 3, rep = 4
    }

    let handle: UnsafeMutableRawPointer

    public init(_ kind: Kind, context: ZMQContext = .shared) throws(ZMQError) {
        guard let handle = zmq_socket(context.handle, kind.rawValue) else { throw ZMQError("zmq_socket") }
        self.handle = handle
        // Closing must never wait for unsent replies to a peer that has gone.
        try setOption(ZMQ_LINGER, Int32(0))
    }

    deinit { zmq_close(handle) }

    public func setOption(_ option: Int32, _ value: Int32) throws(ZMQError) {
        var value = value
        guard zmq_setsockopt(handle, option, &value, MemoryLayout<Int32>.size) == 0 else { throw ZMQError("zmq_setsockopt(\(option))") }
    }

    public func setOption(_ option: Int32, _ value: Int64) throws(ZMQError) {
        var value = value
        guard zmq_setsockopt(handle, option, &value, MemoryLayout<Int64>.size) == 0 else { throw ZMQError("zmq_setsockopt(\(option))") }
    }

    public func bind(_ endpoint: String) throws(ZMQError) {
        guard zmq_bind(handle, endpoint) == 0 else { throw ZMQError("bind \(endpoint)") }
    }

    public func connect(_ endpoint: String) throws(ZMQError) {
        guard zmq_connect(handle, endpoint) == 0 else { throw ZMQError("connect \(endpoint)") }
    }

    /// The endpoint actually bound (a `tcp://...:*` bind gets its port here).
    public var lastEndpoint: String {
        var buffer = [CChar](repeating: 0, count: 512)
        var size = buffer.count
        guard zmq_getsockopt(handle, ZMQ_LAST_ENDPOINT, &buffer, &size) == 0 else { return "" }
        return String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Sends the frames as one message. Returns false when the peer cannot take it now
    /// (with `dontWait`: gone, or its queue is full).
    @discardableResult
    public func send(_ frames: [[UInt8]], dontWait: Bool = false) throws(ZMQError) -> Bool {
        for (index, frame) in frames.enumerated() {
            var flags: Int32 = index < frames.count - 1 ? ZMQ_SNDMORE : 0
            if dontWait { flags |= ZMQ_DONTWAIT }
            let sent = frame.withUnsafeBytes { zmq_send(handle, $0.baseAddress, $0.count, flags) }
            if sent < 0 {
                let error = ZMQError("zmq_send")
                // An unroutable peer mid-message: libzmq drops the whole message.
                if error.errno == EAGAIN || error.errno == EHOSTUNREACH { return false }
                throw error
            }
        }
        return true
    }

    /// Receives every frame of one message; nil when nothing arrived in time (the socket's
    /// receive timeout, or at once with `dontWait`).
    public func receive(dontWait: Bool = false) throws(ZMQError) -> [[UInt8]]? {
        var frames = [[UInt8]]()
        var more = true
        while more {
            var message = zmq_msg_t()
            zmq_msg_init(&message)
            defer { zmq_msg_close(&message) }
            if zmq_msg_recv(&message, handle, dontWait && frames.isEmpty ? ZMQ_DONTWAIT : 0) < 0 {
                let error = ZMQError("zmq_msg_recv")
                if frames.isEmpty && (error.errno == EAGAIN || error.errno == EINTR) { return nil }
                throw error
            }
            let size = zmq_msg_size(&message)
            if let data = zmq_msg_data(&message), size > 0 {
                frames.append(Array(UnsafeRawBufferPointer(start: data, count: size)))
            } else {
                frames.append([])
            }
            more = zmq_msg_more(&message) != 0
        }
        return frames
    }

    /// Waits until this socket has a message or `fd` is readable, at most `timeout` ms
    /// (-1: forever). Returns which of the two is ready.
    public func poll(alsoFileDescriptor fd: Int32? = nil, timeoutMilliseconds timeout: Int) throws(ZMQError) -> (socket: Bool, fd: Bool) {
        var items = [zmq_pollitem_t(socket: handle, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0)]
        if let fd { items.append(zmq_pollitem_t(socket: nil, fd: fd, events: Int16(ZMQ_POLLIN), revents: 0)) }
        let ready = zmq_poll(&items, Int32(items.count), timeout)
        if ready < 0 {
            let error = ZMQError("zmq_poll")
            if error.isInterrupted { return (false, false) }
            throw error
        }
        let socketReady = items[0].revents & Int16(ZMQ_POLLIN) != 0
        let fdReady = items.count > 1 && items[1].revents & Int16(ZMQ_POLLIN) != 0
        return (socketReady, fdReady)
    }
}
