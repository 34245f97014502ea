# dume_layer(NAME SOURCES ... [PUBLIC deps...] [PRIVATE deps...])
#
# One folder of pipeline/ as its own static library `dume_NAME`. Its headers are found by
# file name through the folder's include directory, which only the layers that link it see: a
# header of a lower layer that includes a higher one does not build.
function(dume_layer name)
  cmake_parse_arguments(ARG "" "" "SOURCES;PUBLIC;PRIVATE" ${ARGN})
  add_library(dume_${name} STATIC ${ARG_SOURCES})
  target_include_directories(dume_${name} PUBLIC ${CMAKE_CURRENT_SOURCE_DIR})
  target_link_libraries(dume_${name} PUBLIC ${ARG_PUBLIC} PRIVATE ${ARG_PRIVATE} dume_warnings)
endfunction()
