import Foundation

/// The answers of a real Podman 4.3.1 (`podman system service`), recorded
/// with curl on its socket; Recorded/README.md says how.
enum Recorded {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Recorded")

    static func bytes(_ name: String) throws -> [UInt8] {
        Array(try Data(contentsOf: directory.appendingPathComponent(name)))
    }

    // The ids of what the recording made.
    static let ordersPod = "9a981427eaf5772225643b6e52d04fde0076f7e8850d1d7ca212110c6c2597ea"
    static let ordersInfra = "cc6dfee31987a789f8119576a818bf42d6db9e3ba1832e0cd832e3d5d58f8fc6"
    static let ordersApp = "c1287875967dc563f9f0135f7e371f56490da90e2514d5a6f8caf95f310aafb2"
    static let plainPod = "a686baf38cc23b9fb9606ed10c734fe4391120e869cbd6f9548e53ac6f814b6d"
    static let plainInfra = "df15fcf5916b2ff51ff5288c136f03b623d406f713cfd8d4f39d49f86f9696d9"
    static let reviewsPod = "f4aa4ad2696c0e8260cc56a466de15566f7fb98f239a8dffc17283516c839bca"
    static let reviewsInfra = "91bb3af77d1ab062aa589a1e0e7bd07439d07d98e2c0b3db234e4d7832bfa028"
    static let reviewsWeb = "2f01f922cec5c2e7327967d29007062d23843bb3b65ac8c402f752647ed94664"
    static let solo = "675dca604e7add3e6ddede336ac75d9ef2d88bc87ad3a86d18c52679e0666d55"
    static let stopped = "e7c438c22da13e4b021de52f346e1b4451460ac457aede5af23b7b633c40db71"
    static let exposer = "3e2f0239f767de0115ab6eec958c28141659b6005527e87d5b9eba06f6f1d865"

    /// File names of the inspections, by container or pod id.
    static let libpodContainerFiles: [String: String] = [
        ordersInfra: "libpod-container-orders-infra.json",
        plainInfra: "libpod-container-plain-infra.json",
        reviewsInfra: "libpod-container-reviews-infra.json",
        solo: "libpod-container-solo.json",
        exposer: "libpod-container-exposer.json",
    ]
    static let libpodPodFiles: [String: String] = [
        ordersPod: "libpod-pod-orders.json",
        plainPod: "libpod-pod-plain.json",
        reviewsPod: "libpod-pod-reviews.json",
    ]
    static let dockerContainerFiles: [String: String] = [
        ordersInfra: "docker-container-orders-infra.json",
        solo: "docker-container-solo.json",
        exposer: "docker-container-exposer.json",
    ]
}
