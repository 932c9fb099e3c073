import NIOCore
import NIOSSL

/// The listener's TLS context, built once at start from ``ServerTLS``: the files are read and checked before
/// anything listens, so a wrong path or a key that does not match its certificate stops the start with a message
/// naming the file.
struct ServerTLSContext {
    let context: NIOSSLContext

    init(_ settings: ServerTLS) throws(TLSSetupError) {
        let chain: [NIOSSLCertificate]
        do {
            chain = try NIOSSLCertificate.fromPEMFile(settings.certificateFile)
        } catch {
            throw TLSSetupError("cannot read the TLS certificate \(settings.certificateFile): \(error)")
        }
        guard !chain.isEmpty else { throw TLSSetupError("the TLS certificate file \(settings.certificateFile) holds no certificate") }
        let key: NIOSSLPrivateKey
        do {
            key = try NIOSSLPrivateKey(file: settings.keyFile, format: .pem)
        } catch {
            throw TLSSetupError("cannot read the TLS private key \(settings.keyFile): \(error)")
        }
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv12
        if let ca = settings.clientCAFile {
            let roots: [NIOSSLCertificate]
            do {
                roots = try NIOSSLCertificate.fromPEMFile(ca)
            } catch {
                throw TLSSetupError("cannot read the client CA file \(ca): \(error)")
            }
            configuration.trustRoots = .certificates(roots)
            configuration.certificateVerification = .noHostnameVerification
        }
        do {
            context = try NIOSSLContext(configuration: configuration)
        } catch {
            throw TLSSetupError("TLS cannot use \(settings.certificateFile) with \(settings.keyFile): \(error) (does the key belong to the certificate?)")
        }
    }

    /// The handler that goes first in each connection's pipeline.
    func makeHandler() -> NIOSSLServerHandler { NIOSSLServerHandler(context: context) }
}

/// TLS settings that cannot be used, said so an operator can fix them.
public struct TLSSetupError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
