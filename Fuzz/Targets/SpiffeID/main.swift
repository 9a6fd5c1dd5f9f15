import FuzzSupport
import TLS

/// A SPIFFE ID as it comes in a peer certificate's URI SAN, a config or a
/// policy (`SpiffeID(_:)`). Parsing is strict, so an ID it accepts is written
/// exactly as its canonical form and reads back as itself.
Fuzzing.run { bytes in
    let text = Fuzzing.text(bytes)
    guard let id = try? SpiffeID(text) else { return }
    Fuzzing.require(id.description == text, "\(text.debugDescription) was accepted as \(id), another spelling")
    Fuzzing.require((try? SpiffeID(id.description)) == id, "\(id) does not read back as itself")
    Fuzzing.require(id.principal == String(text.dropFirst("spiffe://".count)), "the principal of \(id) is \(id.principal)")
    if let (namespace, serviceAccount) = id.namespaceAndServiceAccount {
        let rebuilt = try? SpiffeID(trustDomain: id.trustDomain, namespace: namespace, serviceAccount: serviceAccount)
        Fuzzing.require(rebuilt == id, "\(id) rebuilt from its namespace and service account is \(String(describing: rebuilt))")
    }
}
