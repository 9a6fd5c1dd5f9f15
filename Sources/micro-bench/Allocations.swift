import Glibc
import NIOCore

/// How many times the C allocator is called for one 16 KiB chunk sent on an
/// open tunnel stream and echoed back, both ends of the tunnel's HTTP/2
/// connection and stream table included (in memory: no sockets, no TLS).
/// Swift objects, closures' contexts and ByteBuffers all come from malloc, so
/// the count covers every heap allocation.
///
/// Run as `micro-bench allocations` with Tests/integration/tools/malloc_counter.c
/// built and preloaded (`LD_PRELOAD`); without it there is nothing to count.
func measureAllocations() throws {
    guard let symbol = dlsym(nil, "mesh_malloc_count") else {
        fail("allocations: the malloc counter is not loaded; build Tests/integration/tools/malloc_counter.c and run with LD_PRELOAD")
    }
    let allocationCount = unsafeBitCast(symbol, to: (@convention(c) () -> UInt).self)
    let tunnel = try InMemoryTunnel()
    let stream = try tunnel.openStreamForRoundTrips()
    let chunk = ByteBuffer(repeating: 0x2A, count: 16 * 1024)
    let chunks = 1_000
    // The first chunks grow buffers and caches to their steady size.
    for _ in 0..<100 {
        guard try tunnel.roundTrip(on: stream, chunk) else { fail("allocations: a warm-up chunk did not come back") }
    }
    let before = allocationCount()
    for _ in 0..<chunks {
        guard try tunnel.roundTrip(on: stream, chunk) else { fail("allocations: a chunk did not come back") }
    }
    let counted = allocationCount() - before
    let perChunk = Double(counted) / Double(chunks)
    let label = "HBONE hop pair allocations, 16 KiB echoed".padding(toLength: 44, withPad: " ", startingAt: 0)
    print("\(label) \(String(format: "%.1f", perChunk)) allocations/chunk  (\(chunks) chunks, \(counted) allocations)")
}
