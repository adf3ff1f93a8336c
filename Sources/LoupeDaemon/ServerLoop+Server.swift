import Foundation
import LoupePlugin
import LoupeTrace
import LoupeWire

/// `hello` and `server.stats`.
extension ServerLoop {
    func hello(_ request: Request) -> [String: MessageValue] {
        if let client = request.fields["client"]?.stringValue {
            logger.info("hello", metadata: ["seq": "\(request.requester.sequence)", "client": "\(client)"])
        }
        return [
            "protocol": MessageValue(WireProtocol.version), "server": "loupe", "server_version": .string(configuration.serverVersion),
            "instance": .string(instance), "started": .string(started.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))),
            "architectures": MessageValue(registry.names), "interventions": MessageValue(trace: interventions.schema),
            "trace_ops": MessageValue(CompiledTrace.ops), "ops": MessageValue(ops),
            "sweep": SweepSpec.hello,
            "plugins": .array(plugins.entries.map { entry in
                ["kind": .string(entry.kind.rawValue), "name": .string(entry.name), "origin": .string(entry.origin)]
            }),
            "plugin_failures": .array(plugins.failures.map { failure in
                ["origin": .string(failure.library), "code": .string(failure.code.rawValue), "message": .string(failure.message)]
            }),
            "limits": ["max_message_bytes": MessageValue(configuration.limits.maxBytes),
                       "max_batch_tokens": MessageValue(configuration.maxBatchTokens),
                       "max_generate_tokens": MessageValue(configuration.maxGenerateTokens),
                       "max_queue": MessageValue(configuration.maxQueue),
                       "max_saved_bytes": MessageValue(configuration.maxSavedBytes),
                       "max_backward_bytes": MessageValue(configuration.maxBackwardBytes),
                       "max_job_seconds": MessageValue(configuration.maxJobSeconds),
                       "max_client_jobs": MessageValue(configuration.maxClientJobs),
                       "max_model_bytes": MessageValue(configuration.maxModelBytes)],
        ]
    }

    func stats() -> [String: MessageValue] {
        let live = jobs.values
        return [
            "uptime_seconds": MessageValue(Date().timeIntervalSince(started)),
            "requests": MessageValue(requestsServed),
            "models": MessageValue(models.keys.sorted()),
            "model_bytes": MessageValue(instances.values.reduce(0) { $0 + $1.model.weightBytes }),
            "rss_bytes": MessageValue(ProcessMemory.residentBytes()),
            "jobs": ["queued": MessageValue(live.filter { $0.state == .queued }.count),
                     "running": MessageValue(live.filter { $0.state == .running }.count),
                     "retained": MessageValue(finishedJobs.count)],
            "endpoint": .string(endpoint),
            "pid": MessageValue(Int(ProcessInfo.processInfo.processIdentifier)),
        ]
    }
}

/// The process's resident memory, from /proc on Linux (0 where there is none).
enum ProcessMemory {
    static func residentBytes() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let fields = text.split(separator: " ")
        guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }
}
