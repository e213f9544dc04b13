// Shared ring tests: Xen public/io/ring.h semantics (indices, notification
// through req_event/rsp_event, producer overflow checks) on a raw page.
import CXen
import Testing
@testable import XenPVKit

func blkRequest(id: UInt64) -> blkif_request {
    var request = blkif_request()
    request.id = id
    request.operation = UInt8(BLKIF_OP_READ)
    return request
}

func blkResponse(id: UInt64, status: Int16 = Int16(BLKIF_RSP_OKAY)) -> blkif_response {
    var response = blkif_response()
    response.id = id
    response.status = status
    return response
}

@Suite struct SharedRingTests {
    let page = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)

    @Test func requestsAndResponsesTravelInOrder() throws {
        var front = FrontRing<BlkifRing>(initializing: page)
        var back = BackRing<BlkifRing>(attaching: page)
        #expect(front.size == 32 && front.freeRequests == 32)
        for id in 0..<5 { front.enqueue(blkRequest(id: UInt64(id))) }
        #expect(try back.unconsumedRequests() == 0, "not pushed yet")
        let result1 = front.pushRequests()
        #expect(result1, "req_event starts at 1: the first request notifies")
        var ids: [UInt64] = []
        while let request = try back.dequeueRequest() {
            ids.append(request.id)
            back.enqueue(blkResponse(id: request.id))
        }
        #expect(ids == [0, 1, 2, 3, 4])
        let result2 = back.pushResponses()
        #expect(result2)
        var answered: [UInt64] = []
        while let response = try front.dequeueResponse() { answered.append(response.id) }
        #expect(answered == ids)
        #expect(front.freeRequests == 32)
    }

    @Test func notificationsFollowTheEventIndices() throws {
        var front = FrontRing<BlkifRing>(initializing: page)
        var back = BackRing<BlkifRing>(attaching: page)
        front.enqueue(blkRequest(id: 1))
        let result3 = front.pushRequests()
        #expect(result3)
        _ = try back.dequeueRequest()
        // The backend is busy (has not re-armed req_event): no notification.
        front.enqueue(blkRequest(id: 2))
        let result4 = front.pushRequests()
        #expect(!result4)
        _ = try back.dequeueRequest()
        // Going idle, it asks for the next request and rechecks.
        let result5 = try back.finalCheckForRequests()
        #expect(!result5)
        #expect(back.shared.requestEvent == back.requestConsumer + 1)
        front.enqueue(blkRequest(id: 3))
        let result6 = front.pushRequests()
        #expect(result6)
        let result7 = try back.finalCheckForRequests()
        #expect(result7)

        back.enqueue(blkResponse(id: 1))
        let result8 = back.pushResponses()
        #expect(result8, "rsp_event starts at 1")
        back.enqueue(blkResponse(id: 2))
        let result9 = back.pushResponses()
        #expect(!result9)
        _ = try front.dequeueResponse()
        _ = try front.dequeueResponse()
        let result10 = try front.finalCheckForResponses()
        #expect(!result10)
        back.enqueue(blkResponse(id: 3))
        let result11 = back.pushResponses()
        #expect(result11)
    }

    @Test func freeRunningIndicesWrapAroundUInt32() throws {
        let start = UInt32.max - 3
        var front = FrontRing<NetifTransmitRing>(attaching: page, at: start)
        front.shared.requestProducer = start
        front.shared.responseProducer = start
        front.shared.requestEvent = start &+ 1
        front.shared.responseEvent = start &+ 1
        var back = BackRing<NetifTransmitRing>(attaching: page, at: start)
        for round in 0..<3 {
            for id in 0..<10 {
                var request = netif_tx_request()
                request.id = UInt16(round * 10 + id)
                front.enqueue(request)
            }
            _ = front.pushRequests()
            var seen: [UInt16] = []
            while let request = try back.dequeueRequest() {
                seen.append(request.id)
                back.enqueue(netif_tx_response(id: request.id, status: Int16(NETIF_RSP_OKAY)))
            }
            #expect(seen == (0..<10).map { UInt16(round * 10 + $0) })
            _ = back.pushResponses()
            var count = 0
            while try front.dequeueResponse() != nil { count += 1 }
            #expect(count == 10)
        }
        #expect(front.responseConsumer == start &+ 30)
        #expect(front.responseConsumer < start, "the index wrapped")
    }

    @Test func aFullRingRefusesMoreRequests() {
        var front = FrontRing<BlkifRing>(initializing: page)
        for id in 0..<32 { front.enqueue(blkRequest(id: UInt64(id))) }
        #expect(front.isFull)
        #expect(front.freeRequests == 0)
    }

    @Test func illBehavedPeersAreDetected() throws {
        var front = FrontRing<BlkifRing>(initializing: page)
        front.enqueue(blkRequest(id: 1))
        _ = front.pushRequests()
        front.shared.responseProducer = 40
        #expect(throws: RingError.responseProducerOverflow(producer: 40, consumer: 0, size: 32)) {
            _ = try front.dequeueResponse()
        }
        var back = BackRing<BlkifRing>(attaching: page)
        front.shared.requestProducer = 33
        #expect(throws: RingError.requestProducerOverflow(producer: 33, responsesProduced: 0, size: 32)) {
            _ = try back.dequeueRequest()
        }
    }
}
