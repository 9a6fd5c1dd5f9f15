import Testing
@testable import TLS

@Test func placeholderTLS() {}
