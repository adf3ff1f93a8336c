import LoupeFormats
import LoupeModels
import LoupeSweeps
import LoupeTrace
import LoupeWire

/// The engine's errors as protocol errors, with the code a client can act on.
extension ProtocolError {
    /// An error from loading a model.
    static func loading(_ error: any Error, source: String) -> ProtocolError {
        switch error {
        case let error as ProtocolError: return error
        case ModelError.format(let format) where format.kind == .notFound:
            return ProtocolError(.notFound, "cannot load '\(source)': \(format.message)", field: "source")
        case let format as FormatError where format.kind == .notFound:
            return ProtocolError(.notFound, "cannot load '\(source)': \(format.message)", field: "source")
        case ModelError.modelTooLarge:
            return ProtocolError(.tooLarge, "cannot load '\(source)': \(error)", field: "source")
        default:
            return ProtocolError(.loadFailed, "cannot load '\(source)': \(error)", field: "source")
        }
    }

    /// An error from running a model.
    static func running(_ error: any Error) -> ProtocolError {
        switch error {
        case let error as ProtocolError: return error
        case let error as ModelError:
            switch error {
            case .tokenOutOfRange: return ProtocolError(.indexOutOfRange, error.description, field: "tokens")
            case .tooLong: return ProtocolError(.tooLarge, error.description, field: "tokens")
            case .emptyInput: return ProtocolError(.badRequest, error.description, field: "tokens")
            case .hookShapeMismatch: return ProtocolError(.shapeMismatch, error.description)
            case .cancelled: return ProtocolError(.cancelled, "the job was cancelled")
            case .siteNotProvided: return ProtocolError(.unknownSite, error.description)
            default: return ProtocolError(.internalError, error.description)
            }
        case let error as SweepError:
            return error.protocolError()
        case let error as TraceError:
            return ProtocolError(error)
        default:
            return ProtocolError(.internalError, "unexpected error: \(error)")
        }
    }
}

extension ProtocolError {
    /// A trace's error: the same code, its field, and the node at fault.
    init(_ error: TraceError) {
        let code = ErrorCode(rawValue: error.code.rawValue) ?? .internalError
        self.init(code, error.message, field: error.field, node: error.node)
    }
}
