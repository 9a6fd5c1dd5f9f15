import Testing
@testable import Identity

@Test func placeholderIdentity() {}
