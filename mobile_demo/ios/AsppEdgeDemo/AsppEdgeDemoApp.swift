import SwiftUI

@main
struct AsppEdgeDemoApp: App {
    var body: some Scene {
        WindowGroup { ContentView() }
    }
}
