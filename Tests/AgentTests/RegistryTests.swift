import LinuxNet
import Testing
@testable import Agent

@Suite struct RegistryChangeTests {
    @Test func differenceReportsAddedAndRemovedIdsPerLevel() {
        let before: [Int: [CgroupID]] = [2: [CgroupID(10), CgroupID(11)], 3: [CgroupID(30)]]
        let after: [Int: [CgroupID]] = [2: [CgroupID(11), CgroupID(12)], 4: [CgroupID(40)]]
        let changes = WorkloadRegistry.difference(from: before, to: after)
        #expect(changes.added == [2: [CgroupID(12)], 4: [CgroupID(40)]])
        #expect(changes.removed == [2: [CgroupID(10)], 3: [CgroupID(30)]])
    }

    @Test func noChangeIsEmpty() {
        let same: [Int: [CgroupID]] = [2: [CgroupID(1)]]
        #expect(WorkloadRegistry.difference(from: same, to: same).isEmpty)
    }
}
