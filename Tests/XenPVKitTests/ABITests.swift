// ABI tests: the C compiler's sizeof/offsetof of the libxen-dev structures
// (CXen's shim) against the layout Swift imports and the Swift code uses.
import CXen
import Testing
import BareMetalKit
@testable import XenPVKit

/// Swift's importer view (MemoryLayout of the imported types) of every fact in the C shim's table, by the same name.
let swiftLayout: [String: Int] = {
    func off<T>(_ path: PartialKeyPath<T>) -> Int { MemoryLayout<T>.offset(of: path)! }
    return [
        "shared_info": MemoryLayout<shared_info>.size,
        "shared_info.vcpu_info": off(\shared_info.vcpu_info),
        "shared_info.evtchn_pending": off(\shared_info.evtchn_pending),
        "shared_info.evtchn_mask": off(\shared_info.evtchn_mask),
        "shared_info.wc_version": off(\shared_info.wc_version),
        "shared_info.wc_sec": off(\shared_info.wc_sec),
        "shared_info.wc_nsec": off(\shared_info.wc_nsec),
        "shared_info.wc_sec_hi": off(\shared_info.wc_sec_hi),
        "shared_info.arch": off(\shared_info.arch),
        "vcpu_info": MemoryLayout<vcpu_info>.stride,
        "vcpu_info.evtchn_upcall_pending": off(\vcpu_info.evtchn_upcall_pending),
        "vcpu_info.evtchn_upcall_mask": off(\vcpu_info.evtchn_upcall_mask),
        "vcpu_info.evtchn_pending_sel": off(\vcpu_info.evtchn_pending_sel),
        "vcpu_info.arch": off(\vcpu_info.arch),
        "vcpu_info.time": off(\vcpu_info.time),
        "vcpu_time_info": MemoryLayout<vcpu_time_info>.size,
        "vcpu_time_info.version": off(\vcpu_time_info.version),
        "vcpu_time_info.tsc_timestamp": off(\vcpu_time_info.tsc_timestamp),
        "vcpu_time_info.system_time": off(\vcpu_time_info.system_time),
        "vcpu_time_info.tsc_to_system_mul": off(\vcpu_time_info.tsc_to_system_mul),
        "vcpu_time_info.tsc_shift": off(\vcpu_time_info.tsc_shift),
        "vcpu_time_info.flags": off(\vcpu_time_info.flags),
        "mmu_update": MemoryLayout<mmu_update>.stride,
        "mmu_update.ptr": off(\mmu_update.ptr),
        "mmu_update.val": off(\mmu_update.val),
        "start_info": MemoryLayout<start_info>.size,
        "start_info.magic": off(\start_info.magic),
        "start_info.nr_pages": off(\start_info.nr_pages),
        "start_info.flags": off(\start_info.flags),
        "start_info.mfn_list": off(\start_info.mfn_list),
        "start_info.nr_pt_frames": off(\start_info.nr_pt_frames),
        "start_info.shared_info": off(\start_info.shared_info),
        "start_info.store_mfn": off(\start_info.store_mfn),
        "start_info.store_evtchn": off(\start_info.store_evtchn),
        "start_info.console": off(\start_info.console),
        "start_info.pt_base": off(\start_info.pt_base),
        "start_info.cmd_line": off(\start_info.cmd_line),
        "hvm_start_info": MemoryLayout<hvm_start_info>.size,
        "hvm_start_info.magic": off(\hvm_start_info.magic),
        "hvm_start_info.cmdline_paddr": off(\hvm_start_info.cmdline_paddr),
        "hvm_start_info.rsdp_paddr": off(\hvm_start_info.rsdp_paddr),
        "hvm_start_info.memmap_paddr": off(\hvm_start_info.memmap_paddr),
        "evtchn_alloc_unbound": MemoryLayout<evtchn_alloc_unbound>.size,
        "evtchn_alloc_unbound.remote_dom": off(\evtchn_alloc_unbound.remote_dom),
        "evtchn_alloc_unbound.port": off(\evtchn_alloc_unbound.port),
        "evtchn_bind_interdomain": MemoryLayout<evtchn_bind_interdomain>.size,
        "evtchn_bind_interdomain.remote_port": off(\evtchn_bind_interdomain.remote_port),
        "evtchn_bind_interdomain.local_port": off(\evtchn_bind_interdomain.local_port),
        "evtchn_bind_virq": MemoryLayout<evtchn_bind_virq>.size,
        "evtchn_bind_virq.vcpu": off(\evtchn_bind_virq.vcpu),
        "evtchn_bind_virq.port": off(\evtchn_bind_virq.port),
        "evtchn_close": MemoryLayout<evtchn_close>.size,
        "evtchn_send": MemoryLayout<evtchn_send>.size,
        "evtchn_unmask": MemoryLayout<evtchn_unmask>.size,
        "grant_entry_v1": MemoryLayout<grant_entry_v1>.stride,
        "grant_entry_v1.flags": off(\grant_entry_v1.flags),
        "grant_entry_v1.domid": off(\grant_entry_v1.domid),
        "grant_entry_v1.frame": off(\grant_entry_v1.frame),
        "gnttab_setup_table": MemoryLayout<gnttab_setup_table>.size,
        "gnttab_setup_table.nr_frames": off(\gnttab_setup_table.nr_frames),
        "gnttab_setup_table.status": off(\gnttab_setup_table.status),
        "gnttab_setup_table.frame_list": off(\gnttab_setup_table.frame_list),
        "gnttab_map_grant_ref": MemoryLayout<gnttab_map_grant_ref>.size,
        "gnttab_map_grant_ref.flags": off(\gnttab_map_grant_ref.flags),
        "gnttab_map_grant_ref.ref": off(\gnttab_map_grant_ref.ref),
        "gnttab_map_grant_ref.dom": off(\gnttab_map_grant_ref.dom),
        "gnttab_map_grant_ref.status": off(\gnttab_map_grant_ref.status),
        "gnttab_map_grant_ref.handle": off(\gnttab_map_grant_ref.handle),
        "gnttab_map_grant_ref.dev_bus_addr": off(\gnttab_map_grant_ref.dev_bus_addr),
        "gnttab_unmap_grant_ref": MemoryLayout<gnttab_unmap_grant_ref>.size,
        "gnttab_unmap_grant_ref.dev_bus_addr": off(\gnttab_unmap_grant_ref.dev_bus_addr),
        "gnttab_unmap_grant_ref.handle": off(\gnttab_unmap_grant_ref.handle),
        "gnttab_unmap_grant_ref.status": off(\gnttab_unmap_grant_ref.status),
        "gnttab_query_size": MemoryLayout<gnttab_query_size>.size,
        "gnttab_query_size.max_nr_frames": off(\gnttab_query_size.max_nr_frames),
        "xen_add_to_physmap": MemoryLayout<xen_add_to_physmap>.size,
        "xen_add_to_physmap.space": off(\xen_add_to_physmap.space),
        "xen_add_to_physmap.idx": off(\xen_add_to_physmap.idx),
        "xen_add_to_physmap.gpfn": off(\xen_add_to_physmap.gpfn),
        "sched_shutdown": MemoryLayout<sched_shutdown>.size,
        "vcpu_set_singleshot_timer": MemoryLayout<vcpu_set_singleshot_timer>.size,
        "vcpu_set_singleshot_timer.flags": off(\vcpu_set_singleshot_timer.flags),
        "xen_hvm_param": MemoryLayout<xen_hvm_param>.size,
        "xen_hvm_param.index": off(\xen_hvm_param.index),
        "xen_hvm_param.value": off(\xen_hvm_param.value),
        "xsd_sockmsg": MemoryLayout<xsd_sockmsg>.stride,
        "xsd_sockmsg.req_id": off(\xsd_sockmsg.req_id),
        "xsd_sockmsg.tx_id": off(\xsd_sockmsg.tx_id),
        "xsd_sockmsg.len": off(\xsd_sockmsg.len),
        "xenstore_domain_interface": MemoryLayout<xenstore_domain_interface>.size,
        "xenstore_domain_interface.rsp": off(\xenstore_domain_interface.rsp),
        "xenstore_domain_interface.req_cons": off(\xenstore_domain_interface.req_cons),
        "xenstore_domain_interface.req_prod": off(\xenstore_domain_interface.req_prod),
        "xenstore_domain_interface.rsp_cons": off(\xenstore_domain_interface.rsp_cons),
        "xenstore_domain_interface.rsp_prod": off(\xenstore_domain_interface.rsp_prod),
        "xenstore_domain_interface.server_features": off(\xenstore_domain_interface.server_features),
        "xenstore_domain_interface.connection": off(\xenstore_domain_interface.connection),
        "xenstore_domain_interface.error": off(\xenstore_domain_interface.error),
        "xencons_interface": MemoryLayout<xencons_interface>.size,
        "xencons_interface.out": off(\xencons_interface.out),
        "xencons_interface.in_cons": off(\xencons_interface.in_cons),
        "xencons_interface.in_prod": off(\xencons_interface.in_prod),
        "xencons_interface.out_cons": off(\xencons_interface.out_cons),
        "xencons_interface.out_prod": off(\xencons_interface.out_prod),
        "netif_tx_sring.req_event": off(\netif_tx_sring.req_event),
        "netif_tx_sring.rsp_prod": off(\netif_tx_sring.rsp_prod),
        "netif_tx_sring.rsp_event": off(\netif_tx_sring.rsp_event),
        "netif_tx_sring.ring": off(\netif_tx_sring.ring),
        "netif_tx_sring_entry": MemoryLayout<netif_tx_sring_entry>.stride,
        "netif_rx_sring.ring": off(\netif_rx_sring.ring),
        "netif_rx_sring_entry": MemoryLayout<netif_rx_sring_entry>.stride,
        "blkif_sring.ring": off(\blkif_sring.ring),
        "blkif_sring_entry": MemoryLayout<blkif_sring_entry>.stride,
        "netif_tx_request": MemoryLayout<netif_tx_request>.size,
        "netif_tx_request.offset": off(\netif_tx_request.offset),
        "netif_tx_request.flags": off(\netif_tx_request.flags),
        "netif_tx_request.id": off(\netif_tx_request.id),
        "netif_tx_request.size": off(\netif_tx_request.size),
        "netif_tx_response": MemoryLayout<netif_tx_response>.size,
        "netif_tx_response.status": off(\netif_tx_response.status),
        "netif_rx_request": MemoryLayout<netif_rx_request>.size,
        "netif_rx_request.gref": off(\netif_rx_request.gref),
        "netif_rx_response": MemoryLayout<netif_rx_response>.size,
        "netif_rx_response.offset": off(\netif_rx_response.offset),
        "netif_rx_response.flags": off(\netif_rx_response.flags),
        "netif_rx_response.status": off(\netif_rx_response.status),
        "blkif_request": MemoryLayout<blkif_request>.size,
        "blkif_request.nr_segments": off(\blkif_request.nr_segments),
        "blkif_request.handle": off(\blkif_request.handle),
        "blkif_request.id": off(\blkif_request.id),
        "blkif_request.sector_number": off(\blkif_request.sector_number),
        "blkif_request.seg": off(\blkif_request.seg),
        "blkif_request_segment": MemoryLayout<blkif_request_segment>.stride,
        "blkif_request_segment.first_sect": off(\blkif_request_segment.first_sect),
        "blkif_request_segment.last_sect": off(\blkif_request_segment.last_sect),
        "blkif_request_indirect": MemoryLayout<blkif_request_indirect>.size,
        "blkif_request_indirect.indirect_op": off(\blkif_request_indirect.indirect_op),
        "blkif_request_indirect.nr_segments": off(\blkif_request_indirect.nr_segments),
        "blkif_request_indirect.id": off(\blkif_request_indirect.id),
        "blkif_request_indirect.sector_number": off(\blkif_request_indirect.sector_number),
        "blkif_request_indirect.handle": off(\blkif_request_indirect.handle),
        "blkif_request_indirect.indirect_grefs": off(\blkif_request_indirect.indirect_grefs),
        "blkif_response": MemoryLayout<blkif_response>.size,
        "blkif_response.operation": off(\blkif_response.operation),
        "blkif_response.status": off(\blkif_response.status),
        "netif_tx_sring.req_prod": off(\netif_tx_sring.req_prod),
        "netif_rx_sring.req_prod": off(\netif_rx_sring.req_prod),
        "netif_rx_sring.req_event": off(\netif_rx_sring.req_event),
        "netif_rx_sring.rsp_prod": off(\netif_rx_sring.rsp_prod),
        "netif_rx_sring.rsp_event": off(\netif_rx_sring.rsp_event),
        "blkif_sring.req_prod": off(\blkif_sring.req_prod),
        "blkif_sring.req_event": off(\blkif_sring.req_event),
        "blkif_sring.rsp_prod": off(\blkif_sring.rsp_prod),
        "blkif_sring.rsp_event": off(\blkif_sring.rsp_event),
        "xenstore_domain_interface.req": off(\xenstore_domain_interface.req),
        "xencons_interface.in": off(\xencons_interface.in),
        "xen_hvm_evtchn_upcall_vector": MemoryLayout<xen_hvm_evtchn_upcall_vector>.size,
        "xen_hvm_evtchn_upcall_vector.vcpu": off(\xen_hvm_evtchn_upcall_vector.vcpu),
        "xen_hvm_evtchn_upcall_vector.vector": off(\xen_hvm_evtchn_upcall_vector.vector),
    ]
}()

/// The offsets and sizes XenPVKit's own code uses (CXEN_OFFSETOF_* from
/// the header, strides of imported types), by fact name.
let codeLayout: [String: Int] = [
        "shared_info.vcpu_info": EventChannels<SimulatedHypervisor>.vcpuInfoOffset,
        "shared_info.evtchn_pending": EventChannels<SimulatedHypervisor>.pendingOffset,
        "shared_info.evtchn_mask": EventChannels<SimulatedHypervisor>.maskOffset,
        "vcpu_info.evtchn_upcall_pending": EventChannels<SimulatedHypervisor>.upcallPendingOffset,
        "vcpu_info.evtchn_pending_sel": EventChannels<SimulatedHypervisor>.pendingSelectorOffset,
        "grant_entry_v1.flags": GrantTable.flagsOffset,
        "grant_entry_v1.domid": GrantTable.domidOffset,
        "grant_entry_v1.frame": GrantTable.frameOffset,
        "xsd_sockmsg": XenStore<SimulatedHypervisor>.headerSize,
        "xenstore_domain_interface.rsp": XenStore<SimulatedHypervisor>.responseOffset,
        "xenstore_domain_interface.req_cons": XenStore<SimulatedHypervisor>.requestConsumerOffset,
        "xenstore_domain_interface.req_prod": XenStore<SimulatedHypervisor>.requestProducerOffset,
        "xenstore_domain_interface.rsp_cons": XenStore<SimulatedHypervisor>.responseConsumerOffset,
        "xenstore_domain_interface.rsp_prod": XenStore<SimulatedHypervisor>.responseProducerOffset,
        "xencons_interface.out": ConsoleRing<SimulatedHypervisor>.outOffset,
        "xencons_interface.in_cons": ConsoleRing<SimulatedHypervisor>.inConsumerOffset,
        "xencons_interface.in_prod": ConsoleRing<SimulatedHypervisor>.inProducerOffset,
        "xencons_interface.out_cons": ConsoleRing<SimulatedHypervisor>.outConsumerOffset,
        "xencons_interface.out_prod": ConsoleRing<SimulatedHypervisor>.outProducerOffset,
        "netif_tx_sring.req_event": NetifTransmitRing.requestEventOffset,
        "netif_tx_sring.rsp_prod": NetifTransmitRing.responseProducerOffset,
        "netif_tx_sring.rsp_event": NetifTransmitRing.responseEventOffset,
        "netif_tx_sring.ring": NetifTransmitRing.entriesOffset,
        "netif_tx_sring_entry": NetifTransmitRing.entryStride,
        "netif_rx_sring.ring": NetifReceiveRing.entriesOffset,
        "netif_rx_sring_entry": NetifReceiveRing.entryStride,
        "blkif_sring.ring": BlkifRing.entriesOffset,
        "blkif_sring_entry": BlkifRing.entryStride,
        "netif_tx_sring.req_prod": NetifTransmitRing.requestProducerOffset,
        "netif_rx_sring.req_prod": NetifReceiveRing.requestProducerOffset,
        "netif_rx_sring.req_event": NetifReceiveRing.requestEventOffset,
        "netif_rx_sring.rsp_prod": NetifReceiveRing.responseProducerOffset,
        "netif_rx_sring.rsp_event": NetifReceiveRing.responseEventOffset,
        "blkif_sring.req_prod": BlkifRing.requestProducerOffset,
        "blkif_sring.req_event": BlkifRing.requestEventOffset,
        "blkif_sring.rsp_prod": BlkifRing.responseProducerOffset,
        "blkif_sring.rsp_event": BlkifRing.responseEventOffset,
        "xenstore_domain_interface.req": XenStore<SimulatedHypervisor>.requestOffset,
        "xencons_interface.in": ConsoleRing<SimulatedHypervisor>.inOffset,
        "start_info.magic": CXEN_OFFSETOF_start_info_magic,
        "start_info.cmd_line": CXEN_OFFSETOF_start_info_cmd_line,
        "vcpu_info.time": CXEN_OFFSETOF_vcpu_info_time,
        "vcpu_info.evtchn_upcall_mask": CXEN_OFFSETOF_vcpu_info_evtchn_upcall_mask,
        "vcpu_time_info.version": CXEN_OFFSETOF_vcpu_time_info_version,
        "shared_info.wc_version": CXEN_OFFSETOF_shared_info_wc_version,
        "shared_info.wc_sec": CXEN_OFFSETOF_shared_info_wc_sec,
        "shared_info.wc_nsec": CXEN_OFFSETOF_shared_info_wc_nsec,
        "shared_info.wc_sec_hi": CXEN_OFFSETOF_shared_info_wc_sec_hi,
        // BareMetalKit's PVClockTimeInfo reads Xen's record (XenTime) at
        // the pvclock offsets; they must be the header's.
        "vcpu_time_info": PVClockTimeInfo.byteCount,
        "vcpu_time_info.tsc_timestamp": 8,
        "vcpu_time_info.system_time": 16,
        "vcpu_time_info.tsc_to_system_mul": 24,
        "vcpu_time_info.tsc_shift": 28,
        "vcpu_time_info.flags": 29,
]

/// The C shim's table.
let cLayout: [String: Int] = {
    var facts: [String: Int] = [:]
    for index in 0..<cxen_layout_fact_count() {
        let fact = cxen_layout_fact_at(index)!.pointee
        facts[String(cString: fact.name)] = Int(fact.value)
    }
    return facts
}()

@Suite struct ABITests {
    @Test func theShimReportsEveryStructureTheSwiftSideUses() {
        #expect(cLayout.count > 100)
        #expect(Set(cLayout.keys) == Set(swiftLayout.keys), "facts measured on one side only")
    }

    @Test(arguments: cLayout.keys.sorted())
    func swiftAgreesWithTheCCompiler(fact: String) {
        #expect(swiftLayout[fact] == cLayout[fact], "\(fact): Swift \(swiftLayout[fact] ?? -1), C \(cLayout[fact] ?? -1)")
    }

    @Test(arguments: codeLayout.keys.sorted())
    func theConstantsTheCodeUsesAgreeWithTheCCompiler(fact: String) {
        #expect(codeLayout[fact] == cLayout[fact], "\(fact): code \(codeLayout[fact] ?? -1), C \(cLayout[fact] ?? -1)")
    }

    /// Values the headers' own comments and definitions fix, so a wrong
    /// include path or interface version cannot pass unnoticed.
    @Test func layoutsMatchThePublicHeaderDefinitions() {
        #expect(cLayout["xsd_sockmsg"] == 16)
        #expect(cLayout["xenstore_domain_interface.req_cons"] == 2 * Int(XENSTORE_RING_SIZE))
        #expect(cLayout["xencons_interface.out"] == 1024)
        #expect(cLayout["xencons_interface.in_cons"] == 1024 + 2048)
        #expect(cLayout["grant_entry_v1"] == 8)
        #expect(cLayout["netif_tx_sring.ring"] == 64)  // 4 indices, pvt[4], __pad[44]
        #expect(cLayout["blkif_request"] == 112)
        #expect(cLayout["blkif_request_indirect"] == 64)  // "Make it 64 byte aligned"
        #expect(cLayout["shared_info.evtchn_pending"] == 32 * MemoryLayout<vcpu_info>.stride)
        #expect(SharedRingPage<BlkifRing>.entries(pageSize: 4096) == 32)
        #expect(SharedRingPage<NetifTransmitRing>.entries(pageSize: 4096) == 256)
        #expect(SharedRingPage<NetifReceiveRing>.entries(pageSize: 4096) == 256)
        #expect(__XEN_INTERFACE_VERSION__ == 0x00040e00)
    }
}
